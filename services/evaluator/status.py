"""A CertCheck's status: counts, the earliest notAfter, the capped list of certificates, and whether it
must be written. Pure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

import msgspec

from schemas.messages import CertCheckStatus, CertificateStatus, Condition, State
from services.domain.certs import CertError
from services.domain.model import CertCheckSpec
from services.domain.times import parse_rfc3339, rfc3339, shift
from services.evaluator.hygiene import NO_FINDINGS, Findings
from services.evaluator.rating import FAR_FUTURE, Rated, Rating

# The ten most urgent certificates: a status holds what needs attention, and each write of it costs the API
# server in proportion to its size (a list of everything would be rewritten at almost every change).
DEFAULT_STATUS_CAP = 10
# The notifier plans from the most urgent certificates of a result: this many, whatever the status lists.
NOTABLE_CAP = 100
STATUS_DNS_NAMES = 10  # per certificate in the status: a SAN list of thousands would crowd out the rest
# The status must fit a bus message and an etcd object with room to spare, whatever the status cap says.
STATUS_MAX_BYTES = 256 << 10

_encode = msgspec.json.Encoder().encode
_INSTANT = timedelta(microseconds=1)


def _days_remaining(not_after: datetime, now: datetime) -> int:
    return math.floor((not_after - now).total_seconds() / 86400)


def certificate_status(rated: Rated, now: datetime) -> CertificateStatus:
    """One certificate as the status lists it, with what the policy finds wrong with it."""
    parsed = rated.entry.parsed
    if isinstance(parsed, CertError):
        return CertificateStatus(
            name=rated.secret.name,
            kind=rated.secret.kind,
            key=rated.entry.key,
            index=rated.entry.index,
            state=State.INVALID,
            active=False,
            reason=parsed.reason,
        )
    return CertificateStatus(
        name=rated.secret.name,
        kind=rated.secret.kind,
        key=rated.entry.key,
        index=rated.entry.index,
        state=rated.state,
        not_before=rfc3339(parsed.not_before),
        not_after=rfc3339(parsed.not_after),
        active=parsed.not_before <= now <= parsed.not_after,
        days_remaining=_days_remaining(parsed.not_after, now),
        subject=parsed.subject_cn,
        issuer=parsed.issuer_cn,
        serial_number=parsed.serial_number,
        fingerprint=parsed.fingerprint,
        dns_names=list(parsed.dns_names[:STATUS_DNS_NAMES]) or None,
        key_algorithm=parsed.key_algorithm,
        key_size=parsed.key_size,
        signature_algorithm=parsed.signature_algorithm,
        problems=[p.message for p in rated.problems] or None,
        origin=parsed.origin,
    )


def shown(rated: Rated, now: datetime) -> tuple[CertificateStatus, int]:
    """A certificate's status entry at ``now`` and its size encoded, worked out once for as long as
    they hold: an entry changes with the whole days remaining and whether the certificate is active."""
    held = cast(tuple[datetime, datetime, CertificateStatus, int] | None, rated.shown)
    if held is not None and held[0] <= now <= held[1]:
        return held[2], held[3]
    entry = certificate_status(rated, now)
    size = len(_encode(entry)) + 1
    object.__setattr__(rated, "shown", (now, _entry_holds_until(rated, now), entry, size))
    return entry, size


def _entry_holds_until(rated: Rated, now: datetime) -> datetime:
    """The last moment ``certificate_status(rated, now)`` says the same."""
    facts = rated.facts
    if facts is None:
        return FAR_FUTURE
    days_left = _days_remaining(facts.not_after, now)
    until = shift(facts.not_after, -timedelta(days=days_left)) or FAR_FUTURE  # days_left holds until
    if now < facts.not_before:
        return min(until, facts.not_before - _INSTANT)
    return until  # at or before notAfter this is at or before it: active turns over there too


def notable_entries(
    ordered: Sequence[Rated], now: datetime, cap: int = NOTABLE_CAP
) -> list[CertificateStatus]:
    """The ``cap`` most urgent certificates (``ordered`` is most urgent first) within STATUS_MAX_BYTES:
    the status's list, and with NOTABLE_CAP, the longer one the notifier plans from."""
    listed = [shown(r, now) for r in ordered[:cap]]
    return within_budget([entry for entry, _ in listed], [size for _, size in listed])


def within_budget(
    entries: list[CertificateStatus], sizes: list[int] | None = None
) -> list[CertificateStatus]:
    """The leading entries that fit STATUS_MAX_BYTES (they are sorted most urgent first); ``sizes``:
    each one's size encoded, when known."""
    budget = STATUS_MAX_BYTES
    for count, entry in enumerate(entries):
        budget -= sizes[count] if sizes is not None else len(_encode(entry)) + 1
        if budget < 0:
            return entries[:count]
    return entries


def certcheck_status(
    spec: CertCheckSpec,
    objects: int,  # the Secrets and ConfigMaps selected
    rating: Rating,
    conditions: list[Condition],
    observed: CertCheckStatus | None,
    now: datetime,
    status_cap: int = DEFAULT_STATUS_CAP,
    found: Findings | None = None,
) -> CertCheckStatus:
    """The status of a CertCheck, without its lastEvaluationTime (see ``stamped``): the counts per
    state, the earliest notAfter, the ``status_cap`` most urgent certificates that fit
    STATUS_MAX_BYTES and how many are left out; the notification failures stay as recorded."""
    earliest = rating.earliest()
    found = found or NO_FINDINGS
    entries = notable_entries(rating.ordered, now, status_cap)
    return CertCheckStatus(
        observed_generation=spec.generation,
        target_secrets_count=objects,
        target_certs_count=len(rating.ordered),
        valid_count=rating.count(State.VALID),
        expiring_soon_count=rating.count(State.EXPIRING_SOON),
        expired_count=rating.count(State.EXPIRED),
        not_yet_valid_count=rating.count(State.NOT_YET_VALID),
        invalid_count=rating.count(State.INVALID),
        renewal_overdue_count=rating.count(State.RENEWAL_OVERDUE),
        weak_count=len(found.weak),
        broken_chain_count=len(found.broken_chains),
        earliest_not_after=rfc3339(earliest.not_after) if earliest else None,
        earliest_certificate=earliest.label if earliest else None,
        certificates=entries,
        certificates_omitted=len(rating.ordered) - len(entries),
        conditions=conditions,
        notification_failures=observed.notification_failures if observed else None,
    )


def stamped(
    status: CertCheckStatus, observed: CertCheckStatus | None, now: datetime, refresh_after: timedelta | None
) -> tuple[CertCheckStatus, bool]:
    """The status with its lastEvaluationTime, and whether it must be written.

    It is written when anything but that time differs from what is recorded, or when the recorded time
    is older than ``refresh_after`` (so that a status still says when it was last confirmed).
    """
    last = observed.last_evaluation_time if observed else None
    unchanged = observed is not None and status == msgspec.structs.replace(
        observed, last_evaluation_time=None
    )
    # The status is anyone's to edit: a time that cannot be read, or lies ahead, is not fresh.
    written_at = parse_rfc3339(last)
    fresh = (
        written_at is not None
        and written_at <= now
        and (refresh_after is None or now - written_at < refresh_after)
    )
    if unchanged and fresh:
        return msgspec.structs.replace(status, last_evaluation_time=last), False
    return msgspec.structs.replace(status, last_evaluation_time=rfc3339(now)), True
