"""The evaluator's pure core: states at the boundaries, next due time, status, annotations, Events."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest

from schemas import annotations as ann
from schemas.messages import State
from services.domain import model, states
from services.domain.certs import CertError, CertFacts
from services.evaluator import core

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def facts(not_after: datetime, not_before: datetime | None = None, fingerprint: str = "f") -> CertFacts:
    return CertFacts(
        not_before=not_before or not_after - timedelta(days=365),
        not_after=not_after,
        subject_cn="svc.test",
        issuer_cn="ca",
        serial_number="1",
        fingerprint=fingerprint,
    )


def secret(
    name: str,
    *parsed: CertFacts | CertError,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> model.SecretView:
    return model.SecretView(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        labels=labels or {"app": "x"},
        annotations=annotations or {},
        entries=tuple(model.CertEntry("tls.crt", i, p) for i, p in enumerate(parsed)),
    )


SPEC = model.CertCheckSpec(namespace="ns", name="check", uid="uid-check", generation=3, threshold_days=30)


class TestClassify:
    def test_exactly_at_threshold_is_expiring_soon(self) -> None:
        cert = facts(NOW + timedelta(days=30))
        assert states.classify(cert, 30, NOW) == State.EXPIRING_SOON

    def test_one_second_before_threshold_is_valid(self) -> None:
        cert = facts(NOW + timedelta(days=30, seconds=1))
        assert states.classify(cert, 30, NOW) == State.VALID

    def test_exactly_at_not_after_is_still_valid_time_so_expiring_soon(self) -> None:
        # RFC 5280: the validity period includes notAfter itself.
        assert states.classify(facts(NOW), 30, NOW) == State.EXPIRING_SOON

    def test_just_after_not_after_is_expired(self) -> None:
        assert states.classify(facts(NOW - timedelta(microseconds=1)), 30, NOW) == State.EXPIRED

    def test_before_not_before_is_not_yet_valid(self) -> None:
        cert = facts(NOW + timedelta(days=400), not_before=NOW + timedelta(seconds=1))
        assert states.classify(cert, 30, NOW) == State.NOT_YET_VALID

    def test_exactly_at_not_before_is_valid(self) -> None:
        cert = facts(NOW + timedelta(days=400), not_before=NOW)
        assert states.classify(cert, 30, NOW) == State.VALID

    def test_zero_threshold_is_expiring_only_at_not_after(self) -> None:
        assert states.classify(facts(NOW + timedelta(seconds=1)), 0, NOW) == State.VALID
        assert states.classify(facts(NOW), 0, NOW) == State.EXPIRING_SOON


class TestNextDue:
    def test_next_due_is_the_threshold_crossing_when_valid(self) -> None:
        cert = facts(NOW + timedelta(days=40))
        assert states.next_due([cert], 30, NOW) == NOW + timedelta(days=10)

    def test_next_due_is_just_after_not_after_when_expiring(self) -> None:
        cert = facts(NOW + timedelta(days=5))
        assert states.next_due([cert], 30, NOW) == NOW + timedelta(days=5, seconds=1)

    def test_next_due_is_not_before_for_a_future_certificate(self) -> None:
        cert = facts(NOW + timedelta(days=400), not_before=NOW + timedelta(hours=2))
        assert states.next_due([cert], 30, NOW) == NOW + timedelta(hours=2)

    def test_next_due_takes_the_earliest_over_all_certificates(self) -> None:
        certs = [facts(NOW + timedelta(days=90)), facts(NOW + timedelta(days=31))]
        assert states.next_due(certs, 30, NOW) == NOW + timedelta(days=1)

    def test_nothing_due_once_everything_expired(self) -> None:
        assert states.next_due([facts(NOW - timedelta(days=1))], 30, NOW) is None

    def test_due_times_round_up_to_whole_seconds(self) -> None:
        cert = facts(NOW + timedelta(days=40, microseconds=250_000))
        assert states.next_due([cert], 30, NOW) == NOW + timedelta(days=10, seconds=1)

    def test_evaluating_at_the_due_time_gives_the_new_state(self) -> None:
        cert = facts(NOW + timedelta(days=40, seconds=7))
        due = states.next_due([cert], 30, NOW)
        assert due is not None
        assert states.classify(cert, 30, due) == State.EXPIRING_SOON
        expired_due = states.next_due([cert], 30, due)
        assert expired_due is not None
        assert states.classify(cert, 30, expired_due) == State.EXPIRED


class TestEvaluate:
    def test_counts_and_urgency_order(self) -> None:
        secrets = [
            secret("healthy", facts(NOW + timedelta(days=200))),
            secret("expiring", facts(NOW + timedelta(days=10))),
            secret("expired", facts(NOW - timedelta(days=1))),
            secret("broken", CertError("malformed certificate")),
        ]
        result = core.evaluate(SPEC, secrets, {}, None, NOW)
        status = result.status
        assert (status.target_secrets_count, status.target_certs_count) == (4, 4)
        assert (
            status.valid_count,
            status.expiring_soon_count,
            status.expired_count,
            status.invalid_count,
        ) == (1, 1, 1, 1)
        assert [c.name for c in status.certificates] == ["expired", "expiring", "broken", "healthy"]
        assert status.earliest_certificate == "expired/tls.crt[0]"
        assert status.certificates[2].reason == "malformed certificate"
        assert status.observed_generation == 3

    def test_status_is_capped_to_the_most_urgent_and_counts_what_is_omitted(self) -> None:
        secrets = [secret(f"s{i:03d}", facts(NOW + timedelta(days=i + 1))) for i in range(50)]
        result = core.evaluate(SPEC, secrets, {}, None, NOW, status_cap=10)
        assert len(result.status.certificates) == 10
        assert result.status.certificates_omitted == 40
        assert result.status.certificates[0].name == "s000"
        assert result.status.target_certs_count == 50

    def test_unchanged_status_is_not_rewritten_and_conditions_keep_their_transition_time(self) -> None:
        secrets = [secret("expiring", facts(NOW + timedelta(days=10, hours=1)))]
        first = core.evaluate(SPEC, secrets, {}, None, NOW)
        assert first.status_changed
        later = NOW + timedelta(minutes=5)  # the same whole number of days remains
        second = core.evaluate(SPEC, secrets, {}, first.status, later)
        assert not second.status_changed
        ready = next(c for c in second.status.conditions if c.type == "ExpiringSoon")
        assert ready.status == "True"
        assert ready.last_transition_time == core.rfc3339(NOW)

    def test_condition_transition_time_moves_when_its_status_flips(self) -> None:
        cert = facts(NOW + timedelta(days=31))
        first = core.evaluate(SPEC, [secret("a", cert)], {}, None, NOW)
        later = NOW + timedelta(days=2)
        second = core.evaluate(SPEC, [secret("a", cert)], {}, first.status, later)
        expiring = next(c for c in second.status.conditions if c.type == "ExpiringSoon")
        assert (expiring.status, expiring.last_transition_time) == ("True", core.rfc3339(later))

    def test_invalid_selector_makes_ready_false_with_the_reason(self) -> None:
        spec = model.CertCheckSpec("ns", "check", "uid", 1, 30, selector_error="bad operator 'Foo'")
        result = core.evaluate(spec, [], {}, None, NOW)
        ready = next(c for c in result.status.conditions if c.type == "Ready")
        assert (ready.status, ready.reason, ready.message) == (
            "False",
            "InvalidSelector",
            "bad operator 'Foo'",
        )

    def test_events_only_for_state_changes(self) -> None:
        expiring = secret("expiring", facts(NOW + timedelta(days=10)))
        first = core.evaluate(SPEC, [expiring], {}, None, NOW)
        reasons = sorted((e.involved_kind, e.reason) for e in first.events)
        assert reasons == [("CertCheck", "ExpiringSoon"), ("Secret", "ExpiringSoon")]
        # The same world, observed after the first result was recorded: nothing new to say.
        recorded = secret(
            "expiring",
            facts(NOW + timedelta(days=10)),
            annotations={k: v for k, v in first.annotation_patches[0].annotations.items() if v is not None},
        )
        second = core.evaluate(SPEC, [recorded], {}, first.status, NOW + timedelta(hours=1))
        assert second.events == []
        assert second.annotation_patches == []

    def test_healthy_certificate_gives_no_warning(self) -> None:
        result = core.evaluate(SPEC, [secret("ok", facts(NOW + timedelta(days=300)))], {}, None, NOW)
        assert result.events == []

    def test_event_dedup_key_is_stable_for_the_same_transition(self) -> None:
        expiring = [secret("expiring", facts(NOW + timedelta(days=10)))]
        first = core.evaluate(SPEC, expiring, {}, None, NOW)
        again = core.evaluate(SPEC, expiring, {}, None, NOW + timedelta(seconds=30))
        assert [e.dedup_key for e in first.events] == [e.dedup_key for e in again.events]


class TestAnnotations:
    def test_annotations_name_the_urgent_certificate_and_the_covering_certchecks(self) -> None:
        view = secret("chain", facts(NOW + timedelta(days=300)), facts(NOW + timedelta(days=20)))
        desired = core.desired_annotations(view, model.Coverage(("a", "b"), 30), NOW)
        assert desired[ann.STATE] == "ExpiringSoon"
        assert desired[ann.NOT_AFTER] == core.rfc3339(NOW + timedelta(days=20))
        assert desired[ann.CHECKED_BY] == "a,b"

    def test_two_certchecks_with_different_thresholds_agree_on_the_annotations(self) -> None:
        view = secret("s", facts(NOW + timedelta(days=20)))
        coverage = {"s": model.Coverage(("long", "short"), 30)}
        long_spec = model.CertCheckSpec("ns", "long", "u1", 1, 30)
        short_spec = model.CertCheckSpec("ns", "short", "u2", 1, 7)
        long_result = core.evaluate(long_spec, [view], coverage, None, NOW)
        short_result = core.evaluate(short_spec, [view], coverage, None, NOW)
        assert long_result.annotation_patches == short_result.annotation_patches
        assert short_result.status.certificates[0].state == State.VALID

    def test_patch_holds_only_what_differs(self) -> None:
        view = secret(
            "s",
            facts(NOW + timedelta(days=200)),
            annotations={ann.STATE: "Valid", ann.CHECKED_BY: "check", "certcheck.dev/stale": "x"},
        )
        desired = core.desired_annotations(view, model.Coverage(("check",), 30), NOW)
        patch = core.annotation_patch(view, desired)
        assert patch is not None
        assert set(patch.annotations) == {ann.NOT_AFTER, ann.NOT_BEFORE}

    def test_cleanup_removes_every_owned_annotation(self) -> None:
        view = secret("s", annotations={ann.STATE: "Valid", ann.CHECKED_BY: "gone"})
        patch = core.cleanup_patch(view)
        assert patch is not None and patch.annotations == {ann.STATE: None, ann.CHECKED_BY: None}
        assert core.cleanup_patch(secret("clean")) is None


@pytest.mark.parametrize("days,state", [(-1, State.EXPIRED), (5, State.EXPIRING_SOON), (60, State.VALID)])
def test_certificate_status_entry_carries_dates_and_remaining_days(days: int, state: State) -> None:
    not_after = NOW + timedelta(days=days, hours=1)
    result = core.evaluate(SPEC, [secret("s", facts(not_after))], {}, None, NOW)
    entry = result.status.certificates[0]
    assert entry.state == state
    assert entry.not_after == core.rfc3339(not_after)
    assert entry.days_remaining == days
    assert entry.active == (state != State.EXPIRED)


def test_configmap_certificates_are_in_the_status_with_their_kind_but_never_annotated() -> None:
    bundle = model.SecretView(
        namespace="ns",
        name="web",
        uid="uid-cm",
        labels={},
        annotations={},
        entries=(model.CertEntry("ca.crt", 0, facts(NOW + timedelta(days=5))),),
        type="",
        kind=model.KUBERNETES_KIND_CONFIGMAP,
    )
    same_name_secret = secret("web", facts(NOW + timedelta(days=300)))
    evaluation = core.evaluate(SPEC, [same_name_secret, bundle], {}, None, NOW)
    first, second = evaluation.status.certificates
    assert (first.kind, first.name, first.state) == ("ConfigMap", "web", State.EXPIRING_SOON)
    assert (second.kind, second.name, second.state) == ("Secret", "web", State.VALID)
    assert evaluation.status.earliest_certificate == "ConfigMap/web/ca.crt[0]"
    assert [patch.name for patch in evaluation.annotation_patches] == ["web"]  # the Secret's only
    assert "ConfigMap/web/ca.crt[0]" in evaluation.events[0].message


def test_spec_keys_do_not_filter_configmap_keys() -> None:
    bundle = model.SecretView(
        namespace="ns",
        name="trust",
        uid="uid-cm",
        labels={},
        annotations={},
        entries=(model.CertEntry("bundle.pem", 0, facts(NOW + timedelta(days=90))),),
        type="",
        kind=model.KUBERNETES_KIND_CONFIGMAP,
    )
    assert len(model.selected_entries(bundle, ["tls.crt"])) == 1


def _fresh(view: model.SecretView) -> model.SecretView:
    """The same Secret as a new view: nothing worked out from the old one is reused."""
    return dataclasses.replace(view)


def _moments(cert: CertFacts, threshold_days: int) -> list[datetime]:
    """Each boundary of a certificate, and a microsecond on either side."""
    tick = timedelta(microseconds=1)
    bounds = [cert.not_before, cert.not_after - timedelta(days=threshold_days), cert.not_after]
    return sorted(b + d for b in bounds for d in (-tick, timedelta(0), tick))


class TestReuseAcrossEvaluations:
    """A Secret's view keeps what evaluations worked out from it; reusing it never changes an answer."""

    def test_a_reused_rating_gives_the_state_a_fresh_one_gives_on_either_side_of_every_boundary(
        self,
    ) -> None:
        cert = facts(NOW + timedelta(days=40), not_before=NOW + timedelta(hours=1))
        view = secret("a", cert)
        for moment in [NOW, *_moments(cert, 30)]:
            reused = core.evaluate(SPEC, [view], {}, None, moment)
            fresh = core.evaluate(SPEC, [_fresh(view)], {}, None, moment)
            assert reused.status == fresh.status, moment
            assert reused.annotation_patches == fresh.annotation_patches, moment
            assert reused.next_due == fresh.next_due, moment

    def test_evaluating_at_an_earlier_moment_after_a_later_one_is_not_answered_from_the_later(
        self,
    ) -> None:
        view = secret("a", facts(NOW + timedelta(days=10)))
        later = core.evaluate(SPEC, [view], {}, None, NOW + timedelta(days=11))
        earlier = core.evaluate(SPEC, [view], {}, None, NOW)
        assert (later.status.expired_count, earlier.status.expiring_soon_count) == (1, 1)

    def test_a_second_certcheck_with_another_threshold_rates_the_same_view_by_its_own(self) -> None:
        view = secret("a", facts(NOW + timedelta(days=20)))
        strict = model.CertCheckSpec(namespace="ns", name="strict", uid="u2", generation=1, threshold_days=7)
        assert core.evaluate(SPEC, [view], {}, None, NOW).status.expiring_soon_count == 1
        assert core.evaluate(strict, [view], {}, None, NOW).status.valid_count == 1

    def test_annotations_follow_the_coverage_the_secret_is_evaluated_with(self) -> None:
        view = secret("a", facts(NOW + timedelta(days=20)))
        alone = core.evaluate(SPEC, [view], {"a": model.Coverage(("check",), 7)}, None, NOW)
        shared = core.evaluate(SPEC, [view], {"a": model.Coverage(("check", "wide"), 30)}, None, NOW)
        assert alone.annotation_patches[0].annotations[ann.STATE] == State.VALID
        assert shared.annotation_patches[0].annotations[ann.STATE] == State.EXPIRING_SOON
        assert shared.annotation_patches[0].annotations[ann.CHECKED_BY] == "check,wide"

    def test_a_replaced_view_starts_with_nothing_worked_out(self) -> None:
        view = secret("a", facts(NOW + timedelta(days=20)))
        core.evaluate(SPEC, [view], {}, None, NOW)
        assert view.memo
        assert not dataclasses.replace(view, labels={"app": "y"}).memo

    def test_next_due_from_each_states_earliest_certificate_is_the_earliest_of_all(self) -> None:
        rng = random.Random(7)
        for _ in range(200):
            certs = []
            for _ in range(rng.randint(1, 8)):
                not_after = NOW + timedelta(seconds=rng.randint(-90, 90) * 86400 + rng.randint(-2, 2))
                not_before = not_after - timedelta(days=rng.randint(1, 200))
                certs.append(facts(not_after, not_before=not_before))
            threshold = rng.choice([0, 7, 30, 60])
            spec = dataclasses.replace(SPEC, threshold_days=threshold)
            views = [secret(f"s{i}", cert) for i, cert in enumerate(certs)]
            evaluation = core.evaluate(spec, views, {}, None, NOW)
            assert evaluation.next_due == states.next_due(certs, threshold, NOW)
