"""The evaluator's pure core: states, status, annotations, Events and the next due time.

No I/O and no clock: every function takes ``now``. This is where the expiry logic lives and is tested.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter

import msgspec

from schemas import annotations as ann
from schemas.messages import (
    AnnotationPatch,
    CertCheckStatus,
    CertificateStatus,
    Condition,
    EventIntent,
    State,
)
from services.domain.certs import CertError, CertFacts
from services.domain.events import certcheck_warning
from services.domain.model import (
    KIND_SECRET,
    CertCheckSpec,
    CertEntry,
    Coverage,
    SecretView,
    entry_label,
    selected_entries,
)
from services.domain.states import classify, next_due
from services.domain.times import days, parse_rfc3339, rfc3339, shift
from services.evaluator import events as ev

# Urgency: what an operator must look at first comes first.
_RANK = {State.EXPIRED: 0, State.EXPIRING_SOON: 1, State.INVALID: 2, State.NOT_YET_VALID: 3, State.VALID: 4}
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
DEFAULT_STATUS_CAP = 100
STATUS_DNS_NAMES = 10  # per certificate in the status: a SAN list of thousands would crowd out the rest
# The status must fit a bus message and an etcd object with room to spare, whatever the status cap says.
STATUS_MAX_BYTES = 256 << 10
_MESSAGE_EXAMPLES = 3


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
    not_after: datetime = field(init=False)
    identity: tuple[str, str, str, int] = field(init=False)  # kind, object name, key, index
    sort_key: tuple[int, datetime, str, str, str, int] = field(init=False)

    def __post_init__(self) -> None:
        parsed = self.entry.parsed
        not_after = parsed.not_after if isinstance(parsed, CertFacts) else _FAR_FUTURE
        identity = (self.secret.kind, self.secret.name, self.entry.key, self.entry.index)
        object.__setattr__(self, "not_after", not_after)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "sort_key", (_RANK[self.state], not_after, *identity))

    @property
    def label(self) -> str:
        return entry_label(self.secret.kind, self.secret.name, self.entry.key, self.entry.index)


_BY_URGENCY = attrgetter("sort_key")
_JUST_AFTER = timedelta(microseconds=1)


def _unchanged_until(rated: Iterable[_Rated], threshold_days: int, now: datetime) -> datetime:
    """The first moment after ``now`` at which any of these certificates' states changes: becomes
    valid at notBefore, expiring at notAfter - threshold, expired just after notAfter."""
    moments: list[datetime | None] = []
    for r in rated:
        facts = r.entry.parsed
        if isinstance(facts, CertFacts):
            moments += (
                facts.not_before,
                shift(facts.not_after, -days(threshold_days)),
                shift(facts.not_after, _JUST_AFTER),
            )
    return min((m for m in moments if m is not None and m > now), default=_FAR_FUTURE)


def _rate(
    secret: SecretView, threshold_days: int, now: datetime, patterns: Sequence[str] = ()
) -> list[_Rated]:
    """The state of each certificate a CertCheck reads in a Secret. Worked out once per view and
    threshold, and reused for as long as no certificate of the Secret reaches a boundary."""
    memo_key = ("rated", threshold_days, tuple(patterns))
    held = secret.memo.get(memo_key)
    if held is not None and held[0] <= now < held[1]:
        return held[2]  # type: ignore[return-value]
    rated = []
    for entry in selected_entries(secret, patterns):
        if isinstance(entry.parsed, CertFacts):
            state = classify(entry.parsed, threshold_days, now)
        else:
            state = State.INVALID
        rated.append(_Rated(secret, entry, state))
    secret.memo[memo_key] = (now, _unchanged_until(rated, threshold_days, now), rated)
    return rated


def _days_remaining(not_after: datetime, now: datetime) -> int:
    return math.floor((not_after - now).total_seconds() / 86400)


def _certificate_status(rated: _Rated, now: datetime) -> CertificateStatus:
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
            f"{total} certificates in {secrets} objects evaluated",
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


def _notification_conditions(
    spec: CertCheckSpec, observed: CertCheckStatus | None, conditions: dict[str, Condition], now: datetime
) -> list[Condition]:
    """``NotificationFailed`` mirrors the failures the notifier recorded in the status."""
    failures = (observed.notification_failures if observed else None) or []
    if not failures and "NotificationFailed" not in conditions:
        return []
    gen = spec.generation
    if failures:
        message = "; ".join(f"{f.target}: {f.reason}" for f in failures)[:1000]
        return [_condition("NotificationFailed", True, "DeliveryFailed", message, gen, conditions, now)]
    message = "every notification target accepts messages again"
    return [_condition("NotificationFailed", False, "Delivered", message, gen, conditions, now)]


def desired_annotations(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[_Rated] | None = None
) -> dict[str, str | None]:
    """What certcheck's annotations on a Secret should be, given every CertCheck that covers it.

    The state uses the largest threshold among the covering CertChecks, so two CertChecks with different
    thresholds compute the same annotations and never fight over them. ``rated``: the Secret's entries
    already rated at that threshold with the default keys, if the caller has them.
    """
    if rated is None:
        rated = _rate(secret, coverage.max_threshold_days, now)
    desired: dict[str, str | None] = dict.fromkeys(ann.ALL)
    desired[ann.CHECKED_BY] = ",".join(coverage.certchecks)
    if not rated:
        desired[ann.STATE] = State.INVALID.value
        return desired
    urgent = min(rated, key=_BY_URGENCY)
    desired[ann.STATE] = urgent.state.value
    if isinstance(urgent.entry.parsed, CertFacts):
        desired[ann.NOT_AFTER] = rfc3339(urgent.entry.parsed.not_after)
        desired[ann.NOT_BEFORE] = rfc3339(urgent.entry.parsed.not_before)
    return desired


def _annotation_change(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[_Rated] | None
) -> tuple[dict[str, str | None], AnnotationPatch | None]:
    """The desired annotations of a Secret and the patch to them, reused like the rating they rest on."""
    memo_key = ("annotations", coverage)
    held = secret.memo.get(memo_key)
    if held is not None and held[0] <= now < held[1]:
        return held[2]  # type: ignore[return-value]
    if rated is None:
        rated = _rate(secret, coverage.max_threshold_days, now)
    desired = desired_annotations(secret, coverage, now, rated)
    change = (desired, annotation_patch(secret, desired))
    secret.memo[memo_key] = (now, _unchanged_until(rated, coverage.max_threshold_days, now), change)
    return change


def _overlaid(annotations: dict[str, str], patch: dict[str, str | None] | None) -> dict[str, str]:
    """The annotations once ``patch`` is applied (None removes a key)."""
    if not patch:
        return annotations
    merged = {**annotations, **patch}
    return {k: v for k, v in merged.items() if v is not None}


def annotation_patch(secret: SecretView, desired: dict[str, str | None]) -> AnnotationPatch | None:
    """The smallest patch that brings the Secret's annotations to ``desired``, or None."""
    changes = {k: v for k, v in desired.items() if secret.annotations.get(k) != v}
    if not changes:
        return None
    return AnnotationPatch(secret.namespace, secret.name, secret.uid, changes, secret.resource_version)


def cleanup_patch(secret: SecretView) -> AnnotationPatch | None:
    """Remove everything certcheck wrote on a Secret no CertCheck covers."""
    if not secret.annotations:
        return None
    return AnnotationPatch(
        secret.namespace, secret.name, secret.uid, dict.fromkeys(secret.annotations), secret.resource_version
    )


def _entry_change(rated: _Rated) -> ev.EntryChange:
    parsed = rated.entry.parsed
    facts = parsed if isinstance(parsed, CertFacts) else None
    return ev.EntryChange(
        label=rated.label,
        kind=rated.secret.kind,
        secret=rated.secret.name,
        key=rated.entry.key,
        index=rated.entry.index,
        state=str(rated.state),
        not_after=rfc3339(facts.not_after) if facts else None,
        fingerprint=facts.fingerprint if facts else "",
    )


_encode = msgspec.json.Encoder().encode


def _within_budget(entries: list[CertificateStatus]) -> list[CertificateStatus]:
    """The leading entries that fit STATUS_MAX_BYTES (they are sorted most urgent first)."""
    budget = STATUS_MAX_BYTES
    for count, entry in enumerate(entries):
        budget -= len(_encode(entry)) + 1
        if budget < 0:
            return entries[:count]
    return entries


def failed_evaluation(
    spec: CertCheckSpec,
    observed: CertCheckStatus | None,
    error: str,
    now: datetime,
    refresh_after: timedelta | None = None,
) -> Evaluation:
    """What to record when evaluating a CertCheck raised: the last status with ``Ready=False``, reason
    ``EvaluationFailed`` naming the error, and one Warning Event per distinct error."""
    base = observed or CertCheckStatus()
    conditions = {c.type: c for c in base.conditions}
    message = f"evaluation failed, retrying with backoff: {error}"[:1000]
    conditions["Ready"] = _condition(
        "Ready", False, "EvaluationFailed", message, spec.generation, conditions, now
    )
    status, changed = _stamped(
        msgspec.structs.replace(
            base, observed_generation=spec.generation, conditions=list(conditions.values())
        ),
        observed,
        now,
        refresh_after,
    )
    event = certcheck_warning(
        spec.namespace, spec.name, spec.uid, "EvaluationFailed", message, spec.resource_version, error
    )
    return Evaluation(status=status, status_changed=changed, events=[event])


def _stamped(
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


def evaluate(
    spec: CertCheckSpec,
    secrets: Sequence[SecretView],
    coverage: dict[str, Coverage],
    observed: CertCheckStatus | None,
    now: datetime,
    status_cap: int = DEFAULT_STATUS_CAP,
    refresh_after: timedelta | None = None,
    told: CertCheckStatus | None = None,
    told_patches: Sequence[AnnotationPatch] = (),
) -> Evaluation:
    """Evaluate one CertCheck over the Secrets it selects.

    ``coverage`` maps each selected Secret's name to every CertCheck covering it (for the annotations);
    ``observed`` is the status as last written (the diff base for conditions and writes); ``told`` the
    status of the last evaluation published, written yet or not, the base of the CertCheck's Events
    (without it, ``observed``), and ``told_patches`` its annotation patches, which laid over what each
    Secret carries are the base of the Secret's Events: a change that comes before what the evaluation
    before it said was written and watched back still gets its Event.
    """
    pending = {(p.name, p.uid): p.annotations for p in told_patches}
    rated_of = {(s.kind, s.name): _rate(s, spec.threshold_days, now, spec.keys) for s in secrets}
    rated = sorted((r for of_one in rated_of.values() for r in of_one), key=_BY_URGENCY)
    by_state: dict[State, list[_Rated]] = {}
    for r in rated:
        by_state.setdefault(r.state, []).append(r)
    with_dates = [r for r in rated if r.not_after != _FAR_FUTURE]
    earliest = min(with_dates, key=lambda r: r.not_after) if with_dates else None
    observed_conditions = {c.type: c for c in observed.conditions} if observed else {}
    status, status_changed = _stamped(
        CertCheckStatus(
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
            certificates=(shown := _within_budget([_certificate_status(r, now) for r in rated[:status_cap]])),
            certificates_omitted=len(rated) - len(shown),
            conditions=_conditions(spec, by_state, len(rated), len(secrets), observed_conditions, now)
            + _notification_conditions(spec, observed, observed_conditions, now),
            notification_failures=observed.notification_failures if observed else None,
        ),
        observed,
        now,
        refresh_after,
    )
    evaluation = Evaluation(status=status, status_changed=status_changed)
    for secret in secrets:
        if secret.kind != KIND_SECRET:
            continue  # certcheck annotates Secrets only
        secret_coverage = coverage.get(secret.name, Coverage((spec.name,), spec.threshold_days))
        same_rating = not spec.keys and secret_coverage.max_threshold_days == spec.threshold_days
        desired, patch = _annotation_change(
            secret, secret_coverage, now, rated_of[(secret.kind, secret.name)] if same_rating else None
        )
        if patch is None:
            continue
        evaluation.annotation_patches.append(patch)
        if {ann.STATE, ann.NOT_AFTER} & set(secret.edited_annotations):
            continue  # a hand edit, not a state certcheck recorded: put back without an Event
        event = ev.secret_event(
            ev.SecretChange(
                namespace=secret.namespace,
                name=secret.name,
                uid=secret.uid,
                observed=_overlaid(secret.annotations, pending.get((secret.name, secret.uid))),
                desired=desired,
                threshold_days=secret_coverage.max_threshold_days,
                certchecks=secret_coverage.certchecks,
            )
        )
        if event:
            evaluation.events.append(event)
    base = told if told is not None else observed
    if base is not None and base.certificates_omitted:
        # The Events compare with the entries the status listed: only those can have changed state.
        listed = {(c.kind, c.name, c.key, c.index) for c in base.certificates}
        compared = [r for r in rated if r.identity in listed]
    else:
        compared = rated
    evaluation.events.extend(
        ev.certcheck_events(
            spec.namespace,
            spec.name,
            spec.uid,
            spec.resource_version,
            spec.threshold_days,
            [_entry_change(r) for r in compared],
            base,
        )
    )
    evaluation.next_due = next_due(_due_candidates(by_state), spec.threshold_days, now)
    return evaluation


def _due_candidates(by_state: dict[State, list[_Rated]]) -> list[CertFacts]:
    """The certificates among which the next boundary lies (each state's list is sorted by notAfter).
    A Valid one's next boundary is notAfter - threshold, an ExpiringSoon one's notAfter + 1 s (at most
    a second past it, an Expired one's too): the earliest notAfter of each state has the earliest. A
    NotYetValid certificate's boundaries need not come in notAfter order: all are candidates."""
    candidates = [*by_state.get(State.NOT_YET_VALID, [])]
    for state, at in ((State.VALID, 0), (State.EXPIRING_SOON, 0), (State.EXPIRED, -1)):
        if by_state.get(state):
            candidates.append(by_state[state][at])
    return [r.entry.parsed for r in candidates if isinstance(r.entry.parsed, CertFacts)]
