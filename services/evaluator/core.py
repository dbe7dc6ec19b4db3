"""The evaluator's pure core: one CertCheck's evaluation, composed of the steps the modules beside it
hold (rating, conditions, status, annotations, events). No I/O and no clock: every function takes
``now``. This is where the expiry logic lives and is tested.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from schemas.messages import AnnotationPatch, CertCheckStatus, EventIntent
from services.domain.conditions import condition
from services.domain.events import certcheck_warning
from services.domain.lifecycle import Seen, Slot
from services.domain.model import CertCheckSpec, Coverage, SecretView
from services.domain.reminders import next_reminder
from services.domain.times import rfc3339
from services.evaluator import events as ev
from services.evaluator.annotations import (
    SecretOutcome,
    annotation_patch,
    cleanup_patch,
    desired_annotations,
    secret_outcomes,
)
from services.evaluator.conditions import by_type, certcheck_conditions
from services.evaluator.hygiene import Findings, findings
from services.evaluator.rating import Rated, Rating, next_due_time, rate_certificates
from services.evaluator.status import (
    DEFAULT_STATUS_CAP,
    STATUS_DNS_NAMES,
    STATUS_MAX_BYTES,
    certcheck_status,
    stamped,
)

__all__ = [
    "DEFAULT_STATUS_CAP",
    "STATUS_DNS_NAMES",
    "STATUS_MAX_BYTES",
    "Basis",
    "Evaluation",
    "Parts",
    "annotation_patch",
    "assemble",
    "cleanup_patch",
    "desired_annotations",
    "evaluate",
    "failed_evaluation",
    "rfc3339",
]


@dataclass
class Evaluation:
    status: CertCheckStatus
    status_changed: bool
    annotation_patches: list[AnnotationPatch] = field(default_factory=list)
    events: list[EventIntent] = field(default_factory=list)
    next_due: datetime | None = None
    # Every certificate read, with its state, and the uids of the objects selected: the public events'
    # inputs (empty for a failed evaluation, which says nothing of the certificates).
    certificates: list[Rated] = field(default_factory=list)
    selected_uids: Collection[str] = field(default_factory=set)
    # What each slot holds (None: work it out from ``certificates``), and, from an incremental
    # evaluation, the ``found`` of the one before and the slots that differ from it.
    found: dict[Slot, Seen] | None = None
    found_since: tuple[dict[Slot, Seen], set[Slot]] | None = None


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
    reminders: Sequence[timedelta] = (),
) -> Evaluation:
    """Evaluate one CertCheck over the Secrets it selects.

    ``coverage`` maps each selected Secret's name to every CertCheck covering it (for the annotations);
    ``observed`` is the status as last written (the diff base for conditions and writes); ``told`` the
    status of the last evaluation published, written yet or not, the base of the CertCheck's Events
    (without it, ``observed``), and ``told_patches`` its annotation patches, which laid over what each
    Secret carries are the base of the Secret's Events: a change that comes before what the evaluation
    before it said was written and watched back still gets its Event. ``reminders``: the marks before
    notAfter at which a notification target reminds, moments to be evaluated at too.
    """
    rating = rate_certificates(spec, secrets, now)
    outcomes = secret_outcomes(spec, secrets, coverage, rating, now)
    parts = Parts(
        rating=rating,
        findings=findings(rating.ordered),
        objects=len(secrets),
        outcomes=outcomes,
        patches=[o.patch for o in outcomes if o.patch is not None],
        selected_uids={secret.uid for secret in secrets},
    )
    basis = Basis(now, status_cap, refresh_after, told, told_patches, reminders)
    return assemble(spec, parts, observed, basis)


@dataclass(frozen=True, slots=True)
class Basis:
    """What an evaluation is made at and against, besides the objects and the status as written: the
    moment, the status settings, and what the last evaluation published told (see ``evaluate``)."""

    now: datetime
    status_cap: int = DEFAULT_STATUS_CAP
    refresh_after: timedelta | None = None
    told: CertCheckStatus | None = None
    told_patches: Sequence[AnnotationPatch] = ()
    reminders: Sequence[timedelta] = ()


@dataclass(frozen=True, slots=True)
class Parts:
    """What an evaluation is assembled from, worked out over every selected object (``evaluate``) or
    kept and brought up to date from what changed (services/evaluator/incremental.py)."""

    rating: Rating
    findings: Findings
    objects: int  # Secrets and ConfigMaps selected
    outcomes: Sequence[SecretOutcome]  # those of the Secrets whose Events to derive
    patches: list[AnnotationPatch]  # every Secret's patch still due
    selected_uids: Collection[str]
    by_identity: Mapping[tuple[str, str, str, int], Rated] | None = None
    found: dict[Slot, Seen] | None = None
    found_since: tuple[dict[Slot, Seen], set[Slot]] | None = None


def assemble(spec: CertCheckSpec, parts: Parts, observed: CertCheckStatus | None, basis: Basis) -> Evaluation:
    """The status, the patches, the Events and the next due time of an evaluation, from its parts."""
    rating, found, now = parts.rating, parts.findings, basis.now
    conditions = certcheck_conditions(spec, rating, parts.objects, observed, now, found)
    status = certcheck_status(spec, parts.objects, rating, conditions, observed, now, basis.status_cap, found)
    status, status_changed = stamped(status, observed, now, basis.refresh_after)
    events = ev.secret_events(parts.outcomes, basis.told_patches)
    base = basis.told if basis.told is not None else observed
    events += ev.summary_events(spec, rating.ordered, base, parts.by_identity)
    return Evaluation(
        status=status,
        status_changed=status_changed,
        annotation_patches=parts.patches,
        events=events,
        next_due=_earliest(
            next_due_time(rating, spec.threshold_days, now),
            next_reminder((r.not_after for r in rating.ordered if r.facts is not None), basis.reminders, now)
            if basis.reminders
            else None,
        ),
        certificates=rating.ordered,
        selected_uids=parts.selected_uids,
        found=parts.found,
        found_since=parts.found_since,
    )


def _earliest(*moments: datetime | None) -> datetime | None:
    found = [m for m in moments if m is not None]
    if not found:
        return None
    due = min(found)
    # Schedules are second-granular: round up so the evaluation never runs before the moment.
    return due if not due.microsecond else due.replace(microsecond=0) + timedelta(seconds=1)


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
    conditions = by_type(base)
    message = f"evaluation failed, retrying with backoff: {error}"[:1000]
    conditions["Ready"] = condition(
        "Ready", False, "EvaluationFailed", message, spec.generation, conditions, now
    )
    status, changed = stamped(
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
