"""The claim and settle state machine of the notifier, transition by transition: which deliveries a
replica claims, which it leaves to another, how an outcome is recorded and merged into a state another
replica wrote meanwhile."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from schemas.messages import (
    CertCheckStatus,
    CertificateStatus,
    EvaluationResult,
    ExpiryNotification,
    NotificationSpec,
    NotificationTarget,
    State,
)
from services.domain.times import rfc3339
from services.notifier import claims, core
from services.notifier.channels import DeliveryError

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ME, OTHER = "notifier-a", "notifier-b"
HOOK = NotificationTarget(name="hook")
TARGETS = {"hook": HOOK}


def result(*states: State, uid: str = "uid-1") -> EvaluationResult:
    entries = [
        CertificateStatus(name=f"web{i}", key="tls.crt", index=0, state=state, active=True)
        for i, state in enumerate(states)
    ]
    return EvaluationResult(
        namespace="shop",
        name="web",
        uid=uid,
        generation=1,
        evaluated_at=rfc3339(NOW),
        view_seq=1,
        status=CertCheckStatus(certificates=entries),
        status_changed=True,
        notification=NotificationSpec(targets=[HOOK]),
        threshold_days=30,
    )


def pending(by: str, until: datetime, attempts: int = 0) -> core.Pending:
    notification = ExpiryNotification("earlier", "shop", "web", "hook", 30, [])
    return core.Pending("earlier", notification, attempts, claimed_by=by, claimed_until=rfc3339(until))


def state_with(target: core.TargetState, uid: str = "uid-1") -> core.NotifyState:
    return core.NotifyState(uid=uid, targets={"hook": target})


def plan_over(target: core.TargetState, evaluated: EvaluationResult) -> claims.Claim:
    return claims.plan_claim(state_with(target), evaluated, TARGETS, ME, NOW)


def test_new_notices_become_a_delivery_claimed_by_this_replica() -> None:
    claim = claims.plan_claim(core.NotifyState(), result(State.EXPIRING_SOON), TARGETS, ME, NOW)
    assert (claim.mine, claim.blocked, claim.elsewhere_until) == ({"hook"}, set(), None)
    planned = claim.state.targets["hook"]
    assert planned.pending is not None
    assert (planned.pending.claimed_by, planned.pending.claimed_until) == (ME, "2026-06-01T00:01:00Z")
    assert planned.pending.notification.delivery_id == planned.pending.delivery_id
    assert [n.secret for n in planned.pending.notification.certificates] == ["web0"]
    assert planned.seen["web0/tls.crt[0]"].state == "ExpiringSoon"
    assert claim.state.uid == "uid-1"


def test_nothing_to_tell_claims_nothing_but_remembers_what_was_seen() -> None:
    claim = claims.plan_claim(core.NotifyState(), result(State.VALID), TARGETS, ME, NOW)
    assert claim.mine == set() and claim.state.targets["hook"].pending is None
    assert claim.state.targets["hook"].seen["web0/tls.crt[0]"].state == "Valid"


def test_another_replicas_live_claim_is_left_to_it_and_looked_at_again_soon() -> None:
    theirs = pending(OTHER, NOW + timedelta(seconds=30))
    claim = plan_over(core.TargetState(pending=theirs), result(State.EXPIRED))
    assert (claim.mine, claim.blocked) == (set(), {"hook"})
    assert claim.elsewhere_until == claims.CLAIM_POLL_SECONDS
    assert claim.state.targets["hook"].pending == theirs
    assert claim.state.targets["hook"].seen == {}  # not planned against this result: the earlier one first


def test_a_claim_about_to_run_out_is_looked_at_just_after_it_does() -> None:
    theirs = pending(OTHER, NOW + timedelta(seconds=1))
    later = NOW + timedelta(milliseconds=600)
    claim = claims.plan_claim(state_with(core.TargetState(pending=theirs)), result(), TARGETS, ME, later)
    assert claim.elsewhere_until == 1.4


def test_an_expired_claim_is_taken_over_with_the_same_delivery() -> None:
    theirs = pending(OTHER, NOW - timedelta(seconds=1), attempts=2)
    claim = plan_over(core.TargetState(pending=theirs), result(State.EXPIRED))
    assert (claim.mine, claim.blocked, claim.elsewhere_until) == ({"hook"}, {"hook"}, None)
    taken = claim.state.targets["hook"].pending
    assert taken is not None
    assert (taken.delivery_id, taken.attempts, taken.claimed_by) == ("earlier", 2, ME)
    assert taken.claimed_until == "2026-06-01T00:01:00Z"


def test_this_replicas_own_claim_is_taken_again() -> None:
    mine = pending(ME, NOW + timedelta(seconds=30))
    claim = plan_over(core.TargetState(pending=mine), result())
    assert claim.mine == {"hook"} and claim.elsewhere_until is None


def test_targets_the_certcheck_no_longer_has_are_dropped() -> None:
    loaded = core.NotifyState(uid="uid-1", targets={"hook": core.TargetState(), "gone": core.TargetState()})
    claim = claims.plan_claim(loaded, result(), TARGETS, ME, NOW)
    assert set(claim.state.targets) == {"hook"}


def test_a_new_uid_starts_from_an_empty_state() -> None:
    _, seen = core.plan(HOOK, result(State.EXPIRED).status.certificates, {}, NOW)
    earlier = state_with(core.TargetState(seen=seen, failure="refused"), uid="uid-0")
    claim = claims.plan_claim(earlier, result(State.EXPIRED), TARGETS, ME, NOW)
    assert claim.state.uid == "uid-1" and claim.state.targets["hook"].failure is None
    assert claim.mine == {"hook"}  # the same state is news for the new CertCheck


def test_a_sent_blocking_delivery_asks_for_planning_again() -> None:
    theirs = pending(OTHER, NOW - timedelta(seconds=1))
    claim = plan_over(core.TargetState(pending=theirs), result())
    assert not claim.unblocked()
    claims.settle(claim.state.targets["hook"], None, NOW, max_attempts=6)
    assert claim.unblocked()


def test_success_clears_the_delivery_and_the_failure() -> None:
    since = "2026-05-01T00:00:00Z"
    target = core.TargetState(pending=pending(ME, NOW), failure="refused", failing_since=since)
    assert claims.settle(target, None, NOW, max_attempts=6) is None
    assert (target.pending, target.failure, target.failing_since) == (None, None, None)


def test_a_retryable_failure_keeps_the_delivery_and_waits_at_least_retry_after() -> None:
    target = core.TargetState(pending=pending(ME, NOW, attempts=1))
    delay = claims.settle(target, DeliveryError("busy", True, retry_after=42.0), NOW, max_attempts=6)
    assert delay == 42.0
    assert target.pending is not None and target.pending.attempts == 2 and target.failure is None
    backoff = claims.settle(target, DeliveryError("busy", True), NOW, max_attempts=6)
    assert backoff == 2.0  # no Retry-After: 0.5 s doubled for each earlier attempt


def test_a_failure_a_retry_cannot_fix_is_given_up_at_once() -> None:
    target = core.TargetState(pending=pending(ME, NOW))
    assert claims.settle(target, DeliveryError("HTTP 404", False), NOW, max_attempts=6) is None
    assert target.pending is None
    assert (target.failure, target.failing_since) == ("HTTP 404 (after 1 attempts)", "2026-06-01T00:00:00Z")


def test_giving_up_after_the_last_attempt_keeps_when_the_failing_began() -> None:
    target = core.TargetState(pending=pending(ME, NOW, attempts=5), failing_since="2026-05-01T00:00:00Z")
    assert claims.settle(target, DeliveryError("HTTP 503", True), NOW, max_attempts=6) is None
    assert target.pending is None and target.failure == "HTTP 503 (after 6 attempts)"
    assert target.failing_since == "2026-05-01T00:00:00Z"


def settled_claim(**targets: core.TargetState) -> claims.Claim:
    """What this replica claimed (the delivery "earlier" of each target) and how each went."""
    return claims.Claim(core.NotifyState(uid="uid-1", targets=targets), {name: "earlier" for name in targets})


def test_merging_into_a_state_the_other_replica_only_looked_at_records_our_outcome() -> None:
    # It found our live claim and saved its look: our delivery is still the pending one.
    current = state_with(core.TargetState(pending=pending(ME, NOW + timedelta(seconds=60))))
    merged = claims.merge_outcomes(current, settled_claim(hook=core.TargetState()))
    assert merged.targets["hook"].pending is None  # sent: not left to be sent again


def test_merging_keeps_the_other_replicas_new_pending_work() -> None:
    # Our claim ran out; the other replica settled our delivery and planned a new one.
    newer = msgspec.structs.replace(pending(OTHER, NOW + timedelta(seconds=60)), delivery_id="newer")
    current = state_with(core.TargetState(pending=newer))
    sent = settled_claim(hook=core.TargetState())
    gave_up = settled_claim(hook=core.TargetState(failure="refused", failing_since="2026-06-01T00:00:00Z"))
    assert claims.merge_outcomes(current, sent).targets["hook"].pending == newer
    merged = claims.merge_outcomes(current, gave_up).targets["hook"]
    assert (merged.pending, merged.failure) == (newer, None)


def test_merging_leaves_a_delivery_settled_elsewhere_settled() -> None:
    current = state_with(core.TargetState())  # the other replica took our delivery over and sent it
    retrying = settled_claim(hook=core.TargetState(pending=pending(ME, NOW, attempts=1)))
    assert claims.merge_outcomes(current, retrying).targets["hook"].pending is None


def test_merging_records_our_retry_and_our_failure_of_the_delivery_still_pending() -> None:
    ours = pending(ME, NOW + timedelta(seconds=60))
    current = core.NotifyState(
        uid="uid-1",
        targets={"hook": core.TargetState(pending=ours), "pager": core.TargetState(pending=ours)},
    )
    retry = pending(ME, NOW, attempts=1)
    settled = settled_claim(
        hook=core.TargetState(failure="refused", failing_since="2026-06-01T00:00:00Z"),
        pager=core.TargetState(pending=retry),
        removed=core.TargetState(pending=retry),
    )
    merged = claims.merge_outcomes(current, settled)
    assert (merged.targets["hook"].pending, merged.targets["hook"].failure) == (None, "refused")
    assert merged.targets["hook"].failing_since == "2026-06-01T00:00:00Z"
    assert merged.targets["pager"].pending == retry
    assert "removed" not in merged.targets  # the other replica dropped it: it stays dropped


def test_merging_leaves_targets_this_replica_did_not_claim_to_the_writer() -> None:
    # We left "pager" to the other replica's claim; it has sent it since.
    theirs = pending(OTHER, NOW + timedelta(seconds=60))
    current = core.NotifyState(uid="uid-1", targets={"hook": core.TargetState(), "pager": core.TargetState()})
    as_loaded = {"hook": core.TargetState(), "pager": core.TargetState(pending=theirs)}
    settled = claims.Claim(core.NotifyState(uid="uid-1", targets=as_loaded), {"hook": "earlier"})
    assert claims.merge_outcomes(current, settled).targets["pager"].pending is None


def test_notices_are_planned_from_the_results_notable_list_not_the_shorter_status_list() -> None:
    longer = result(*[State.EXPIRING_SOON] * 12)
    shown = msgspec.structs.replace(longer.status, certificates=longer.status.certificates[:10])
    evaluated = msgspec.structs.replace(longer, status=shown, notable=longer.status.certificates)
    claim = claims.plan_claim(core.NotifyState(), evaluated, TARGETS, ME, NOW)
    planned = claim.state.targets["hook"].pending
    assert planned is not None and len(planned.notification.certificates) == 12
