"""A certificate's state at a moment, and the moments it changes. Pure: no I/O and no clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from schemas.messages import State
from services.domain.certs import CertFacts
from services.domain.times import days, shift


def classify(facts: CertFacts, threshold_days: int, now: datetime) -> State:
    """A certificate's state. Validity is inclusive of both ends, as RFC 5280 says."""
    if now > facts.not_after:
        return State.EXPIRED
    if now < facts.not_before:
        return State.NOT_YET_VALID
    if facts.not_after - now <= days(threshold_days):
        return State.EXPIRING_SOON
    return State.VALID


def boundaries(facts: CertFacts, threshold_days: int) -> list[datetime]:
    """The moments at which ``classify`` changes its answer: becomes valid, expiring, expired. A moment
    outside year 1 to 9999 never comes (a notAfter of 9999-12-31T23:59:59Z never expires)."""
    moments = (
        facts.not_before,
        shift(facts.not_after, -days(threshold_days)),
        shift(facts.not_after, timedelta(seconds=1)),
    )
    return [moment for moment in moments if moment is not None]


def next_due(facts_list: Iterable[CertFacts], threshold_days: int, now: datetime) -> datetime | None:
    """The earliest moment after ``now`` at which any certificate's state changes, or None."""
    upcoming = [b for facts in facts_list for b in boundaries(facts, threshold_days) if b > now]
    if not upcoming:
        return None
    due = min(upcoming)
    # Schedules are second-granular: round up so the evaluation never runs before the boundary.
    return shift(due.replace(microsecond=0), timedelta(seconds=1)) if due.microsecond else due
