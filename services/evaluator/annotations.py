"""certcheck's annotations on Secrets: what they should say, and the patch that makes them say it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from schemas import annotations as ann
from schemas.messages import AnnotationPatch, State
from services.domain.model import KIND_SECRET, CertCheckSpec, Coverage, SecretView
from services.domain.times import rfc3339
from services.evaluator.rating import Rated, Rating, most_urgent, rate, unchanged_until


def desired_annotations(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[Rated] | None = None
) -> dict[str, str | None]:
    """What certcheck's annotations on a Secret should be, given every CertCheck that covers it.

    The state uses the largest threshold among the covering CertChecks, so two CertChecks with different
    thresholds compute the same annotations and never fight over them. ``rated``: the Secret's entries
    already rated at that threshold with the default keys, if the caller has them.
    """
    if rated is None:
        rated = rate(secret, coverage.max_threshold_days, now)
    desired: dict[str, str | None] = dict.fromkeys(ann.ALL)
    desired[ann.CHECKED_BY] = ",".join(coverage.certchecks)
    urgent = most_urgent(rated)
    if urgent is None:
        desired[ann.STATE] = State.INVALID.value
        return desired
    desired[ann.STATE] = urgent.state.value
    facts = urgent.facts
    if facts is not None:
        desired[ann.NOT_AFTER] = rfc3339(facts.not_after)
        desired[ann.NOT_BEFORE] = rfc3339(facts.not_before)
    return desired


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


def overlaid(annotations: dict[str, str], patch: dict[str, str | None] | None) -> dict[str, str]:
    """The annotations once ``patch`` is applied (None removes a key)."""
    if not patch:
        return annotations
    merged = {**annotations, **patch}
    return {k: v for k, v in merged.items() if v is not None}


@dataclass(frozen=True, slots=True)
class SecretOutcome:
    """What one evaluation works out for one Secret it selects: the CertChecks covering it, what its
    annotations should say and the patch to them (None when they say it already)."""

    secret: SecretView
    coverage: Coverage
    desired: dict[str, str | None]
    patch: AnnotationPatch | None


def _annotation_change(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[Rated] | None
) -> tuple[dict[str, str | None], AnnotationPatch | None]:
    """The desired annotations of a Secret and the patch to them, reused like the rating they rest on."""
    memo_key = ("annotations", coverage)
    held = secret.memo.get(memo_key)
    if held is not None and held[0] <= now < held[1]:
        return held[2]  # type: ignore[return-value]
    if rated is None:
        rated = rate(secret, coverage.max_threshold_days, now)
    desired = desired_annotations(secret, coverage, now, rated)
    change = (desired, annotation_patch(secret, desired))
    secret.memo[memo_key] = (now, unchanged_until(rated, coverage.max_threshold_days, now), change)
    return change


def secret_outcomes(
    spec: CertCheckSpec,
    secrets: Sequence[SecretView],
    coverage: dict[str, Coverage],
    rating: Rating,
    now: datetime,
) -> list[SecretOutcome]:
    """Each selected Secret's annotation change (ConfigMaps are read, never annotated). A Secret missing
    from ``coverage`` is taken as covered by this CertCheck alone."""
    outcomes = []
    for secret in secrets:
        if secret.kind != KIND_SECRET:
            continue
        secret_coverage = coverage.get(secret.name, Coverage((spec.name,), spec.threshold_days))
        # The CertCheck's own rating is the Secret's when it reads the default keys at the same threshold.
        same_rating = not spec.keys and secret_coverage.max_threshold_days == spec.threshold_days
        rated = rating.of_object.get((secret.kind, secret.name)) if same_rating else None
        desired, patch = _annotation_change(secret, secret_coverage, now, rated)
        outcomes.append(SecretOutcome(secret, secret_coverage, desired, patch))
    return outcomes
