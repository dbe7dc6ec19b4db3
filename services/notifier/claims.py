"""Claiming and settling deliveries: the state machine over the notifier's durable state of one CertCheck.
Pure: no I/O, no clock (`now` and the replica's id are passed in).

A result is planned against the state as loaded: per target, the notices to send become a pending
delivery, claimed by this replica for CLAIM_SECONDS. A target that already has a delivery pending is
*blocked* (the earlier delivery goes out first): this replica claims it when the claim is its own or has
run out, and otherwise leaves it to its claimant and looks again soon. Once sent, each outcome is
settled into the target's state; if another replica wrote the state meanwhile, the outcomes are merged
into what it wrote.

The functions change the state they are given (the one just loaded, owned by the caller) and return it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from schemas.messages import CertificateNotice, EvaluationResult, ExpiryNotification, NotificationTarget
from services.common.runtime import backoff as retry_backoff
from services.domain.times import parse_rfc3339, rfc3339
from services.notifier import core
from services.notifier.channels import DeliveryError

CLAIM_SECONDS = 60.0  # a replica's claim on a pending delivery; another takes it over after that
CLAIM_POLL_SECONDS = 2.0  # how soon a replica that found another's claim looks again
MAX_BACKOFF_SECONDS = 60.0


@dataclass
class Claim:
    state: core.NotifyState  # to be written (compare-and-set) before sending
    # The deliveries this replica sends now: target -> delivery id.
    deliveries: dict[str, str] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)  # had a delivery pending: not planned against this result
    elsewhere_until: float | None = None  # seconds until looking again at another replica's claim

    @property
    def mine(self) -> set[str]:
        """The targets whose pending delivery this replica sends now."""
        return set(self.deliveries)

    def unblocked(self) -> bool:
        """Whether a delivery that kept a target from being planned went out (or was given up) since:
        then the target is to be planned again, so that a change seen meanwhile is sent too."""
        return any(self.state.targets[name].pending is None for name in self.blocked & self.mine)


def earliest(current: float | None, delay: float | None) -> float | None:
    """The sooner of two delays, either of which may be None (no delay)."""
    if delay is None:
        return current
    return delay if current is None else min(current, delay)


def _claimed_until(now: datetime) -> str:
    return rfc3339(now + timedelta(seconds=CLAIM_SECONDS))


def plan_claim(
    loaded: core.NotifyState,
    result: EvaluationResult,
    targets: Mapping[str, NotificationTarget],
    me: str,
    now: datetime,
) -> Claim:
    """Plan each target's notices against the loaded state, record them as pending and claim the
    pending deliveries this replica may send. A state of an earlier CertCheck of that name (another uid)
    is started afresh; targets the CertCheck no longer has are dropped."""
    state = loaded if loaded.uid == result.uid else core.NotifyState(uid=result.uid)
    claim = Claim(state)
    for name, target in targets.items():
        target_state = state.targets.setdefault(name, core.TargetState())
        if target_state.pending is not None:
            claim.blocked.add(name)  # an earlier delivery first
            wait = _elsewhere_for(target_state.pending, me, now)
            if wait is not None:
                claim.elsewhere_until = earliest(claim.elsewhere_until, wait)
                continue
            target_state.pending = msgspec.structs.replace(
                target_state.pending, claimed_by=me, claimed_until=_claimed_until(now)
            )
            claim.deliveries[name] = target_state.pending.delivery_id
            continue
        entries = result.notable if result.notable is not None else result.status.certificates
        notices, seen = core.plan(target, entries, target_state.seen, now)
        target_state.seen = seen
        if notices:
            target_state.pending = _pending(result, name, notices, me, now)
            claim.deliveries[name] = target_state.pending.delivery_id
    for gone in set(state.targets) - set(targets):
        del state.targets[gone]
    return claim


def _elsewhere_for(pending: core.Pending, me: str, now: datetime) -> float | None:
    """Seconds until looking again when another replica's claim on the delivery is live, else None."""
    claimed_until = parse_rfc3339(pending.claimed_until)
    if pending.claimed_by in ("", me) or claimed_until is None or claimed_until <= now:
        return None
    # Look again soon: the claimant settles in a moment, normally; then what this result changed is
    # planned without waiting out the whole claim.
    return min((claimed_until - now).total_seconds() + 1, CLAIM_POLL_SECONDS)


def _pending(
    result: EvaluationResult, target: str, notices: list[CertificateNotice], me: str, now: datetime
) -> core.Pending:
    stamp = rfc3339(now)
    delivery = core.delivery_id(result.namespace, result.name, target, notices, stamp)
    notification = ExpiryNotification(
        delivery_id=delivery,
        namespace=result.namespace,
        certcheck=result.name,
        target=target,
        threshold_days=result.threshold_days,
        certificates=notices,
    )
    return core.Pending(delivery, notification, claimed_by=me, claimed_until=_claimed_until(now))


def settle(
    target_state: core.TargetState, error: DeliveryError | None, now: datetime, max_attempts: int
) -> float | None:
    """Record how the target's pending delivery went; returns the delay before trying it again, or None
    when it is done with (sent, or given up and recorded as the target's failure)."""
    pending = target_state.pending
    assert pending is not None
    if error is None:
        target_state.pending = None
        target_state.failure = target_state.failing_since = None
        return None
    attempts = pending.attempts + 1
    if error.retryable and attempts < max_attempts:
        target_state.pending = msgspec.structs.replace(pending, attempts=attempts)
        backoff = retry_backoff(attempts - 1, MAX_BACKOFF_SECONDS)
        return float(max(error.retry_after or 0.0, backoff))
    target_state.pending = None
    target_state.failure = f"{error} (after {attempts} attempts)"
    target_state.failing_since = target_state.failing_since or rfc3339(now)
    return None


def merge_outcomes(current: core.NotifyState, claim: Claim) -> core.NotifyState:
    """The outcomes of the deliveries this replica claimed, settled in `claim.state`, written into the
    state another replica wrote since the claim. That replica may only have looked (our delivery still
    pending under our claim): our outcome stands. Or our claim ran out, it settled our delivery itself and
    may have planned new work: its state stands. Targets this replica did not claim are the writer's."""
    for name, delivery in claim.deliveries.items():
        theirs = current.targets.get(name)
        if theirs is None or theirs.pending is None or theirs.pending.delivery_id != delivery:
            continue  # dropped, or settled elsewhere (then perhaps followed by a new delivery)
        ours = claim.state.targets[name]
        theirs.pending, theirs.failure, theirs.failing_since = ours.pending, ours.failure, ours.failing_since
    return current
