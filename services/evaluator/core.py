"""The evaluator's pure core: states, status, annotations, Events and the next due time.

No I/O and no clock: every function takes ``now``. This is where the expiry logic lives and is tested.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas import annotations as ann
from schemas.messages import (
    AnnotationPatch,
    CertCheckStatus,
    CertificateStatus,
    Condition,
    EventIntent,
    State,
)
from services.evaluator.certs import CertError, CertFacts

CERTCHECK_API_VERSION = "certcheck.dev/v1alpha1"
BAD_STATES = (State.EXPIRING_SOON, State.EXPIRED)
# Urgency: what an operator must look at first comes first.
_RANK = {State.EXPIRED: 0, State.EXPIRING_SOON: 1, State.INVALID: 2, State.NOT_YET_VALID: 3, State.VALID: 4}
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
DEFAULT_STATUS_CAP = 500
_MESSAGE_EXAMPLES = 3


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def classify(facts: CertFacts, threshold_days: int, now: datetime) -> State:
    """A certificate's state. Validity is inclusive of both ends, as RFC 5280 says."""
    if now > facts.not_after:
        return State.EXPIRED
    if now < facts.not_before:
        return State.NOT_YET_VALID
    if now >= facts.not_after - timedelta(days=threshold_days):
        return State.EXPIRING_SOON
    return State.VALID


def boundaries(facts: CertFacts, threshold_days: int) -> tuple[datetime, datetime, datetime]:
    """The moments at which ``classify`` changes its answer: becomes valid, expiring, expired."""
    return (
        facts.not_before,
        facts.not_after - timedelta(days=threshold_days),
        facts.not_after + timedelta(seconds=1),
    )


def next_due(facts_list: Iterable[CertFacts], threshold_days: int, now: datetime) -> datetime | None:
    """The earliest moment after ``now`` at which any certificate's state changes, or None."""
    upcoming = [b for facts in facts_list for b in boundaries(facts, threshold_days) if b > now]
    if not upcoming:
        return None
    due = min(upcoming)
    # Schedules are second-granular: round up so the evaluation never runs before the boundary.
    return due.replace(microsecond=0) + timedelta(seconds=1) if due.microsecond else due


@dataclass(frozen=True, slots=True)
class CertEntry:
    """One certificate (or one unreadable key) of a Secret."""

    key: str
    index: int
    parsed: CertFacts | CertError


@dataclass(frozen=True, slots=True)
class SecretView:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]  # certcheck-owned only
    entries: tuple[CertEntry, ...]


@dataclass(frozen=True, slots=True)
class CertCheckSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    threshold_days: int
    selector_error: str | None = None


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which CertChecks select a Secret, and the largest threshold among them."""

    certchecks: tuple[str, ...]
    max_threshold_days: int


@dataclass
class Evaluation:
    status: CertCheckStatus
    status_changed: bool
    annotation_patches: list[AnnotationPatch] = field(default_factory=list)
    events: list[EventIntent] = field(default_factory=list)
    next_due: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Rated:
    secret: SecretView
    entry: CertEntry
    state: State

    @property
    def not_after(self) -> datetime:
        return self.entry.parsed.not_after if isinstance(self.entry.parsed, CertFacts) else _FAR_FUTURE

    def sort_key(self) -> tuple[int, datetime, str, str, int]:
        return (_RANK[self.state], self.not_after, self.secret.name, self.entry.key, self.entry.index)

    @property
    def label(self) -> str:
        return f"{self.secret.name}/{self.entry.key}[{self.entry.index}]"


def _rate(secret: SecretView, threshold_days: int, now: datetime) -> list[_Rated]:
    rated = []
    for entry in secret.entries:
        if isinstance(entry.parsed, CertFacts):
            state = classify(entry.parsed, threshold_days, now)
        else:
            state = State.INVALID
        rated.append(_Rated(secret, entry, state))
    return rated


def _days_remaining(not_after: datetime, now: datetime) -> int:
    return math.floor((not_after - now).total_seconds() / 86400)


def _certificate_status(rated: _Rated, now: datetime) -> CertificateStatus:
    parsed = rated.entry.parsed
    if isinstance(parsed, CertError):
        return CertificateStatus(
            name=rated.secret.name,
            key=rated.entry.key,
            index=rated.entry.index,
            state=State.INVALID,
            active=False,
            reason=parsed.reason,
        )
    return CertificateStatus(
        name=rated.secret.name,
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
    )


def _condition(
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    observed: dict[str, Condition],
    now: datetime,
) -> Condition:
    status_text = "True" if status else "False"
    previous = observed.get(type_)
    since = previous.last_transition_time if previous and previous.status == status_text else rfc3339(now)
    return Condition(
        type=type_,
        status=status_text,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def _examples(rated: Sequence[_Rated]) -> str:
    shown = ", ".join(
        f"{r.label} (notAfter {rfc3339(r.not_after)})" if r.not_after != _FAR_FUTURE else r.label
        for r in rated[:_MESSAGE_EXAMPLES]
    )
    more = len(rated) - _MESSAGE_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def _conditions(
    spec: CertCheckSpec,
    by_state: dict[State, list[_Rated]],
    total: int,
    secrets: int,
    observed: dict[str, Condition],
    now: datetime,
) -> list[Condition]:
    gen = spec.generation
    if spec.selector_error:
        ready = _condition("Ready", False, "InvalidSelector", spec.selector_error, gen, observed, now)
    else:
        ready = _condition(
            "Ready",
            True,
            "Evaluated",
            f"{total} certificates in {secrets} Secrets evaluated",
            gen,
            observed,
            now,
        )
    conditions = [ready]
    for type_, state, what in (
        ("ExpiringSoon", State.EXPIRING_SOON, f"expiring within {spec.threshold_days} days"),
        ("Expired", State.EXPIRED, "expired"),
        ("Invalid", State.INVALID, "unreadable"),
    ):
        hits = by_state.get(state, [])
        if hits:
            reason, message = f"Certificates{type_}", f"{len(hits)} certificates {what}: {_examples(hits)}"
        else:
            reason, message = f"No{type_}", f"no certificate {what}"
        conditions.append(_condition(type_, bool(hits), reason, message, gen, observed, now))
    return conditions


def _dedup_key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def desired_annotations(secret: SecretView, coverage: Coverage, now: datetime) -> dict[str, str | None]:
    """What certcheck's annotations on a Secret should be, given every CertCheck that covers it.

    The state uses the largest threshold among the covering CertChecks, so two CertChecks with different
    thresholds compute the same annotations and never fight over them.
    """
    rated = sorted(_rate(secret, coverage.max_threshold_days, now), key=_Rated.sort_key)
    desired: dict[str, str | None] = {key: None for key in ann.ALL}
    desired[ann.CHECKED_BY] = ",".join(coverage.certchecks)
    if not rated:
        desired[ann.STATE] = State.INVALID.value
        return desired
    urgent = rated[0]
    desired[ann.STATE] = urgent.state.value
    if isinstance(urgent.entry.parsed, CertFacts):
        desired[ann.NOT_AFTER] = rfc3339(urgent.entry.parsed.not_after)
        desired[ann.NOT_BEFORE] = rfc3339(urgent.entry.parsed.not_before)
    return desired


def annotation_patch(secret: SecretView, desired: dict[str, str | None]) -> AnnotationPatch | None:
    """The smallest patch that brings the Secret's annotations to ``desired``, or None."""
    changes = {k: v for k, v in desired.items() if secret.annotations.get(k) != v}
    if not changes:
        return None
    return AnnotationPatch(secret.namespace, secret.name, secret.uid, changes)


def cleanup_patch(secret: SecretView) -> AnnotationPatch | None:
    """Remove everything certcheck wrote on a Secret no CertCheck covers."""
    if not secret.annotations:
        return None
    return AnnotationPatch(secret.namespace, secret.name, secret.uid, dict.fromkeys(secret.annotations))


def _secret_event(
    secret: SecretView, desired: dict[str, str | None], coverage: Coverage
) -> EventIntent | None:
    new_state = desired.get(ann.STATE)
    if new_state == secret.annotations.get(ann.STATE) or new_state not in BAD_STATES:
        return None
    not_after = desired.get(ann.NOT_AFTER)
    if new_state == State.EXPIRED:
        message = f"Certificate in Secret {secret.namespace}/{secret.name} expired at {not_after}"
    else:
        message = (
            f"Certificate in Secret {secret.namespace}/{secret.name} expires at {not_after}, within the "
            f"{coverage.max_threshold_days}-day threshold of CertCheck {', '.join(coverage.certchecks)}"
        )
    return EventIntent(
        namespace=secret.namespace,
        involved_api_version="v1",
        involved_kind="Secret",
        involved_name=secret.name,
        involved_uid=secret.uid,
        type="Warning",
        reason=str(new_state),
        message=message,
        dedup_key=_dedup_key(secret.uid, str(new_state), str(not_after)),
    )


def _certcheck_events(
    spec: CertCheckSpec, rated: Sequence[_Rated], observed: CertCheckStatus | None
) -> list[EventIntent]:
    previous = {(c.name, c.key, c.index): c.state for c in observed.certificates} if observed else {}
    events = []
    for state in BAD_STATES:
        moved = [
            r
            for r in rated
            if r.state == state and previous.get((r.secret.name, r.entry.key, r.entry.index)) != state
        ]
        if not moved:
            continue
        what = "expired" if state == State.EXPIRED else f"expiring within {spec.threshold_days} days"
        ids = sorted(
            f"{r.label}@{r.entry.parsed.fingerprint if isinstance(r.entry.parsed, CertFacts) else ''}"
            for r in moved
        )
        events.append(
            EventIntent(
                namespace=spec.namespace,
                involved_api_version=CERTCHECK_API_VERSION,
                involved_kind="CertCheck",
                involved_name=spec.name,
                involved_uid=spec.uid,
                type="Warning",
                reason=str(state),
                message=f"{len(moved)} certificates newly {what}: {_examples(moved)}",
                dedup_key=_dedup_key(spec.uid, str(state), *ids),
            )
        )
    return events


def evaluate(
    spec: CertCheckSpec,
    secrets: Sequence[SecretView],
    coverage: dict[str, Coverage],
    observed: CertCheckStatus | None,
    now: datetime,
    status_cap: int = DEFAULT_STATUS_CAP,
) -> Evaluation:
    """Evaluate one CertCheck over the Secrets it selects.

    ``coverage`` maps each selected Secret's name to every CertCheck covering it (for the annotations);
    ``observed`` is the status as last written (the diff base for conditions, Events and writes).
    """
    rated = sorted(
        (r for secret in secrets for r in _rate(secret, spec.threshold_days, now)), key=_Rated.sort_key
    )
    by_state: dict[State, list[_Rated]] = {}
    for r in rated:
        by_state.setdefault(r.state, []).append(r)
    with_dates = [r for r in rated if r.not_after != _FAR_FUTURE]
    earliest = min(with_dates, key=lambda r: r.not_after) if with_dates else None
    observed_conditions = {c.type: c for c in observed.conditions} if observed else {}
    status = CertCheckStatus(
        observed_generation=spec.generation,
        target_secrets_count=len(secrets),
        target_certs_count=len(rated),
        valid_count=len(by_state.get(State.VALID, [])),
        expiring_soon_count=len(by_state.get(State.EXPIRING_SOON, [])),
        expired_count=len(by_state.get(State.EXPIRED, [])),
        not_yet_valid_count=len(by_state.get(State.NOT_YET_VALID, [])),
        invalid_count=len(by_state.get(State.INVALID, [])),
        earliest_not_after=rfc3339(earliest.not_after) if earliest else None,
        earliest_certificate=earliest.label if earliest else None,
        certificates=[_certificate_status(r, now) for r in rated[:status_cap]],
        certificates_omitted=max(0, len(rated) - status_cap),
        conditions=_conditions(spec, by_state, len(rated), len(secrets), observed_conditions, now),
    )
    evaluation = Evaluation(status=status, status_changed=status != observed)
    for secret in secrets:
        secret_coverage = coverage.get(secret.name, Coverage((spec.name,), spec.threshold_days))
        desired = desired_annotations(secret, secret_coverage, now)
        patch = annotation_patch(secret, desired)
        if patch:
            evaluation.annotation_patches.append(patch)
        event = _secret_event(secret, desired, secret_coverage)
        if event:
            evaluation.events.append(event)
    evaluation.events.extend(_certcheck_events(spec, rated, observed))
    evaluation.next_due = next_due(
        (r.entry.parsed for r in rated if isinstance(r.entry.parsed, CertFacts)), spec.threshold_days, now
    )
    return evaluation
