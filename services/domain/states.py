"""A certificate's state at a moment, and the moments it changes. Pure: no I/O and no clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from schemas.messages import State
from services.domain.certs import CertFacts
from services.domain.times import days, shift

# Urgency: what an operator must look at first comes first.
URGENCY = {
    State.EXPIRED: 0,
    State.EXPIRING_SOON: 1,
    State.INVALID: 2,
    State.RENEWAL_OVERDUE: 3,
    State.NOT_YET_VALID: 4,
    State.VALID: 5,
}
# cert-manager renews a certificate when two thirds of its lifetime have passed (its default renewBefore,
# a third of the duration); one still not replaced this long after is overdue. The grace keeps a renewal
# that is merely under way (an ACME order takes minutes) from being reported.
RENEWAL_FRACTION = 2 / 3
RENEWAL_GRACE = timedelta(hours=1)


def renewal_overdue_at(facts: CertFacts) -> datetime | None:
    """When a managed certificate not yet replaced counts as RenewalOverdue (None: never, in range)."""
    renewal = shift(facts.not_before, (facts.not_after - facts.not_before) * RENEWAL_FRACTION)
    return shift(renewal, RENEWAL_GRACE) if renewal is not None else None


def classify(facts: CertFacts, threshold_days: int, now: datetime, renew_by: datetime | None = None) -> State:
    """A certificate's state. Validity is inclusive of both ends, as RFC 5280 says. ``renew_by``: when
    a certificate cert-manager manages should have been replaced (None: not managed)."""
    if now > facts.not_after:
        return State.EXPIRED
    if now < facts.not_before:
        return State.NOT_YET_VALID
    if facts.not_after - now <= days(threshold_days):
        return State.EXPIRING_SOON
    if renew_by is not None and now >= renew_by:
        return State.RENEWAL_OVERDUE
    return State.VALID


def boundaries(facts: CertFacts, threshold_days: int, renew_by: datetime | None = None) -> list[datetime]:
    """The moments at which ``classify`` changes its answer: becomes valid, overdue for renewal,
    expiring, expired. A moment outside year 1 to 9999 never comes (a notAfter of 9999-12-31T23:59:59Z
    never expires)."""
    moments = (
        facts.not_before,
        renew_by,
        shift(facts.not_after, -days(threshold_days)),
        shift(facts.not_after, timedelta(seconds=1)),
    )
    return [moment for moment in moments if moment is not None]


def next_due(
    facts_list: Iterable[CertFacts | tuple[CertFacts, datetime | None]], threshold_days: int, now: datetime
) -> datetime | None:
    """The earliest moment after ``now`` at which any certificate's state changes, or None. Each item:
    a certificate's facts, or its facts and when it should be renewed."""
    pairs = (item if isinstance(item, tuple) else (item, None) for item in facts_list)
    upcoming = [b for facts, renew in pairs for b in boundaries(facts, threshold_days, renew) if b > now]
    if not upcoming:
        return None
    due = min(upcoming)
    # Schedules are second-granular: round up so the evaluation never runs before the boundary.
    return shift(due.replace(microsecond=0), timedelta(seconds=1)) if due.microsecond else due
