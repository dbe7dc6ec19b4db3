"""A CertCheck's conditions: Ready, ExpiringSoon, Expired, Invalid, RenewalOverdue, Weak, ChainInvalid
and NotificationFailed. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from schemas.messages import CertCheckStatus, Condition, State
from services.domain.conditions import condition
from services.domain.model import CertCheckSpec
from services.domain.times import rfc3339
from services.evaluator.hygiene import NO_FINDINGS, Findings
from services.evaluator.rating import FAR_FUTURE, Rated, Rating

_MESSAGE_EXAMPLES = 3
OVERDUE = "not renewed by cert-manager an hour after two thirds of their lifetime"


def by_type(status: CertCheckStatus | None) -> dict[str, Condition]:
    return {c.type: c for c in status.conditions} if status is not None else {}


def _examples(rated: Sequence[Rated]) -> str:
    shown = ", ".join(
        f"{r.label} (notAfter {rfc3339(r.not_after)})" if r.not_after != FAR_FUTURE else r.label
        for r in rated[:_MESSAGE_EXAMPLES]
    )
    more = len(rated) - _MESSAGE_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def state_conditions(
    spec: CertCheckSpec, rating: Rating, objects: int, observed: dict[str, Condition], now: datetime
) -> list[Condition]:
    """Ready (or why not), then one condition per bad state: whether any certificate is in it."""
    gen = spec.generation
    if spec.selector_error:
        ready = condition("Ready", False, "InvalidSelector", spec.selector_error, gen, observed, now)
    else:
        message = f"{len(rating.ordered)} certificates in {objects} objects evaluated"
        ready = condition("Ready", True, "Evaluated", message, gen, observed, now)
    conditions = [ready]
    for type_, state, what in (
        ("ExpiringSoon", State.EXPIRING_SOON, f"expiring within {spec.threshold_days} days"),
        ("Expired", State.EXPIRED, "expired"),
        ("Invalid", State.INVALID, "unreadable"),
        ("RenewalOverdue", State.RENEWAL_OVERDUE, OVERDUE),
    ):
        hits = rating.by_state.get(state, [])
        if hits:
            reason, message = f"Certificates{type_}", f"{len(hits)} certificates {what}: {_examples(hits)}"
        else:
            reason, message = f"No{type_}", f"no certificate {what}"
        conditions.append(condition(type_, bool(hits), reason, message, gen, observed, now))
    return conditions


def hygiene_conditions(
    spec: CertCheckSpec, found: Findings, observed: dict[str, Condition], now: datetime
) -> list[Condition]:
    """``Weak``: whether any certificate's key or signature is weak by the CertCheck's policy;
    ``ChainInvalid``: whether any chain is broken, out of order, or not issued by its ca.crt."""
    gen = spec.generation
    policy = spec.policy
    rules = (
        f"RSA and DSA keys of at least {policy.minimum_rsa_key_size} bits, EC keys of at least "
        f"{policy.minimum_ec_key_size}, no signature with {', '.join(sorted(policy.weak_signature_hashes))}"
    )
    conditions = []
    for type_, hits, bad, good, what in (
        ("Weak", found.weak, "WeakCertificates", "NoWeakCertificates", f"weak (policy: {rules})"),
        ("ChainInvalid", found.broken_chains, "BrokenChains", "ChainsValid", "in a broken chain"),
    ):
        if hits:
            message = f"{len(hits)} certificates {what}: {_problem_examples(hits)}"
            conditions.append(condition(type_, True, bad, message[:1000], gen, observed, now))
        else:
            off = type_ == "ChainInvalid" and not policy.verify_chains
            reason = "NotChecked" if off else good
            message = (
                "chains are not verified (spec.policy.verifyChains)" if off else f"no certificate {what}"
            )
            conditions.append(condition(type_, False, reason, message[:1000], gen, observed, now))
    return conditions


def _problem_examples(rated: Sequence[Rated]) -> str:
    shown = ", ".join(
        f"{r.label} ({'; '.join(p.message for p in r.problems)})" for r in rated[:_MESSAGE_EXAMPLES]
    )
    more = len(rated) - _MESSAGE_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def notification_conditions(
    spec: CertCheckSpec, observed: CertCheckStatus | None, conditions: dict[str, Condition], now: datetime
) -> list[Condition]:
    """``NotificationFailed`` mirrors the failures the notifier recorded in the status; it is absent
    until a notification first fails."""
    failures = (observed.notification_failures if observed else None) or []
    if not failures and "NotificationFailed" not in conditions:
        return []
    gen = spec.generation
    if failures:
        message = "; ".join(f"{f.target}: {f.reason}" for f in failures)[:1000]
        return [condition("NotificationFailed", True, "DeliveryFailed", message, gen, conditions, now)]
    message = "every notification target accepts messages again"
    return [condition("NotificationFailed", False, "Delivered", message, gen, conditions, now)]


def certcheck_conditions(
    spec: CertCheckSpec,
    rating: Rating,
    objects: int,
    observed: CertCheckStatus | None,
    now: datetime,
    found: Findings | None = None,
) -> list[Condition]:
    """Every condition of the CertCheck's status, each keeping its transition time from ``observed``."""
    observed_conditions = by_type(observed)
    return (
        state_conditions(spec, rating, objects, observed_conditions, now)
        + hygiene_conditions(spec, found or NO_FINDINGS, observed_conditions, now)
        + notification_conditions(spec, observed, observed_conditions, now)
    )
