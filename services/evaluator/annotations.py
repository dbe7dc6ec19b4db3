"""certcheck's annotations on Secrets: what they should say, and the patch that makes them say it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import cast

import msgspec

from schemas import annotations as ann
from schemas.messages import AnnotationPatch
from services.domain.model import KUBERNETES_KIND_SECRET, CertCheckSpec, Coverage, SecretView
from services.domain.times import parse_rfc3339, rfc3339
from services.evaluator.hygiene import NO_PROBLEMS, SecretProblems, secret_problems
from services.evaluator.rating import (
    Rated,
    Rating,
    SecretState,
    most_urgent,
    rate,
    state_of,
    unchanged_until,
)


def desired_annotations(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[Rated] | None = None
) -> dict[str, str | None]:
    """What certcheck's annotations on a Secret should be, given every CertCheck that covers it.

    The state uses the largest threshold among the covering CertChecks, and the problems their strictest
    policy, so two CertChecks with different thresholds or policies compute the same annotations and never
    fight over them. ``rated``: the Secret's entries already rated at that threshold and policy with the
    default keys, if the caller has them.
    """
    if rated is None:
        rated = rate(secret, coverage.max_threshold_days, now, (), coverage.policy)
    return _desired(coverage, rated)[1]


def _desired(
    coverage: Coverage, rated: Sequence[Rated]
) -> tuple[SecretState, dict[str, str | None], SecretProblems]:
    """The Secret's state, from its most urgent certificate, and the annotations that record it and
    what the strictest policy covering it finds wrong."""
    urgent = most_urgent(rated)
    state = state_of(urgent)
    found = secret_problems(rated)
    facts = urgent.facts if urgent is not None else None
    desired: dict[str, str | None] = dict.fromkeys(ann.ALL)  # what is not set here is removed
    desired[ann.STATE] = state.state
    desired[ann.NOT_AFTER] = state.not_after
    desired[ann.NOT_BEFORE] = rfc3339(facts.not_before) if facts is not None else None
    desired[ann.CHECKED_BY] = ",".join(coverage.certchecks)
    desired[ann.PROBLEMS] = found.text
    return state, desired, found


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


def recorded_state(annotations: dict[str, str]) -> SecretState:
    """The state a Secret's annotations record, the durable record of its last state."""
    return _recorded(annotations.get(ann.STATE), annotations.get(ann.NOT_AFTER))


@lru_cache(maxsize=1 << 17)  # few distinct values, read again for every Secret at every evaluation
def _recorded(state: str | None, not_after: str | None) -> SecretState:
    """The notAfter is read as a moment and written as a rating writes it, so that how the annotation
    is formatted says nothing (text that names no moment stays as it is)."""
    moment = parse_rfc3339(not_after)
    return SecretState(state, rfc3339(moment) if moment is not None else not_after)


class SecretOutcome(msgspec.Struct, frozen=True, gc=False):  # one per Secret at every evaluation
    """What one evaluation works out for one Secret it selects: the CertChecks covering it, its state
    at the largest of their thresholds, and the patch to its annotations (None when they say it)."""

    secret: SecretView
    coverage: Coverage
    state: SecretState
    patch: AnnotationPatch | None
    problems: SecretProblems = NO_PROBLEMS


# A Secret's memo holds, at (_DESIRED, coverage), its state, desired annotations and problems under that
# coverage: they rest on its content only, so a newer version with the same content (its annotations
# written) shares them. At (_OUTCOME, coverage): the outcome of this very version (its patch), checked.
_DESIRED = "desired"
_OUTCOME = "annotations"
# What _DESIRED holds: the state, the desired annotations (None: removed), the problems, and the
# annotations a Secret saying all that has (its certcheck annotations: the view keeps no others).
_Desired = tuple[SecretState, dict[str, str | None], SecretProblems, dict[str, str]]


def _outcome(
    secret: SecretView, coverage: Coverage, now: datetime, rated: Sequence[Rated] | None
) -> SecretOutcome:
    """A Secret's state and the patch to its annotations, reused like the rating they rest on."""
    held = secret.memo.get((_DESIRED, coverage))
    if held is None or not held[0] <= now < held[1]:
        if rated is None:
            rated = rate(secret, coverage.max_threshold_days, now, (), coverage.policy)
        until = unchanged_until(rated, coverage.max_threshold_days, now)
        state, desired, found = _desired(coverage, rated)
        said = {k: v for k, v in desired.items() if v is not None}
        held = (now, until, (state, desired, found, said))
        secret.memo[(_DESIRED, coverage)] = held
    state, desired, found, said = cast(_Desired, held[2])
    # Most Secrets say what they should: one comparison of their annotations then.
    patch = None if secret.annotations == said else annotation_patch(secret, desired)
    outcome = SecretOutcome(secret, coverage, state, patch, found)
    secret.memo[(_OUTCOME, coverage)] = (held[0], held[1], outcome)
    return outcome


def outcome_valid_until(secret: SecretView, coverage: Coverage) -> datetime:
    """Until when the Secret's outcome under ``coverage``, worked out already, holds."""
    return secret.memo[(_DESIRED, coverage)][1]


def secret_outcomes(
    spec: CertCheckSpec,
    secrets: Sequence[SecretView],
    coverage: dict[str, Coverage],
    rating: Rating,
    now: datetime,
) -> list[SecretOutcome]:
    """Each selected Secret's annotation change (ConfigMaps are read, never annotated). A Secret missing
    from ``coverage`` is taken as covered by this CertCheck alone."""
    alone = Coverage((spec.name,), spec.threshold_days, spec.policy)
    outcomes: list[SecretOutcome] = []
    for secret in secrets:
        if secret.kind != KUBERNETES_KIND_SECRET:
            continue
        secret_coverage = coverage.get(secret.name, alone)
        held = secret.memo.get((_OUTCOME, secret_coverage))
        if held is not None and held[0] <= now < held[1] and cast(SecretOutcome, held[2]).secret is secret:
            outcomes.append(cast(SecretOutcome, held[2]))
            continue
        # The CertCheck's own rating is the Secret's when it reads the default keys at the same threshold
        # and policy.
        same_rating = (
            not spec.keys
            and secret_coverage.max_threshold_days == spec.threshold_days
            and secret_coverage.policy == spec.policy
        )
        rated = rating.of_object.get((secret.kind, secret.name)) if same_rating else None
        outcomes.append(_outcome(secret, secret_coverage, now, rated))
    return outcomes
