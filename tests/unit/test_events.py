"""Which Events a change deserves: one per state change per certificate, with a stable identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from schemas.messages import CertCheckStatus, CertificateStatus, State
from services.domain import model
from services.domain.certs import CertError, CertFacts
from services.evaluator import core
from services.evaluator import events as ev

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SPEC = model.CertCheckSpec("ns", "check", "uid-check", 1, 30, resource_version="40")


def facts(days: float, fingerprint: str = "f1") -> CertFacts:
    not_after = NOW + timedelta(days=days)
    return CertFacts(not_after - timedelta(days=90), not_after, "cn", "ca", "1", fingerprint)


def secret(
    parsed: CertFacts | CertError, annotations: dict[str, str] | None = None, rv: str = "7"
) -> model.SecretView:
    return model.SecretView(
        "ns",
        "s",
        "uid-s",
        {"app": "x"},
        annotations or {},
        (model.CertEntry("tls.crt", 0, parsed),),
        resource_version=rv,
    )


def recorded(view: model.SecretView) -> dict[str, str]:
    desired = core.desired_annotations(view, model.Coverage(("check",), 30), NOW)
    return {k: v for k, v in desired.items() if v is not None}


def secret_events(view: model.SecretView) -> list[tuple[str, str]]:
    return [
        (e.type, e.reason)
        for e in core.evaluate(SPEC, [view], {}, None, NOW).events
        if e.involved_kind == "Secret"
    ]


def test_transition_reasons() -> None:
    assert ev.transition_reason(None, "ExpiringSoon", None, "2026-07-01T00:00:00Z") == "ExpiringSoon"
    assert ev.transition_reason(None, "Valid", None, "2026-07-01T00:00:00Z") is None
    assert ev.transition_reason("Valid", "Invalid", "2026-07-01T00:00:00Z", None) == "Invalid"
    assert (
        ev.transition_reason("ExpiringSoon", "Valid", "2026-07-01T00:00:00Z", "2027-07-01T00:00:00Z")
        == "Renewed"
    )
    assert ev.transition_reason("ExpiringSoon", "Valid", "2026-07-01T00:00:00Z", "2026-07-01T00:00:00Z") == (
        "Recovered"
    )
    assert ev.transition_reason("Valid", "Valid", "2026-07-01T00:00:00Z", "2026-07-01T00:00:00Z") is None


def test_renewing_an_expiring_certificate_gives_a_normal_renewed_event() -> None:
    before = secret(facts(5))
    after = secret(facts(300, "f2"), annotations=recorded(before))
    assert secret_events(after) == [("Normal", "Renewed")]


def test_a_certificate_becoming_unreadable_gives_a_warning_invalid_event() -> None:
    before = secret(facts(100))
    broken = secret(CertError("malformed certificate"), annotations=recorded(before))
    assert secret_events(broken) == [("Warning", "Invalid")]


def test_leaving_the_window_without_renewal_gives_recovered() -> None:
    expiring = secret(facts(20))
    annotations = recorded(expiring)
    relaxed = model.CertCheckSpec("ns", "check", "uid-check", 2, 10)
    result = core.evaluate(
        relaxed,
        [secret(facts(20), annotations=annotations)],
        {"s": model.Coverage(("check",), 10)},
        None,
        NOW,
    )
    assert [(e.type, e.reason) for e in result.events if e.involved_kind == "Secret"] == [
        ("Normal", "Recovered")
    ]


def test_the_same_change_seen_twice_has_the_same_identity_and_occurrence() -> None:
    view = secret(facts(5), rv="7")
    first = core.evaluate(SPEC, [view], {}, None, NOW).events
    again = core.evaluate(SPEC, [view], {}, None, NOW + timedelta(seconds=10)).events
    assert [(e.dedup_key, e.occurrence) for e in first] == [(e.dedup_key, e.occurrence) for e in again]
    assert {e.occurrence for e in first} == {"-@->ExpiringSoon", "40"}


def test_annotations_deleted_by_hand_derive_the_same_event_occurrence_again() -> None:
    first = [e for e in core.evaluate(SPEC, [secret(facts(5), rv="7")], {}, None, NOW).events]
    # certcheck annotated the Secret (rv 8); someone deletes the annotations (rv 9): no state is left
    # on the Secret, so the evaluation derives the ExpiringSoon Event again, as the same occurrence.
    again = core.evaluate(SPEC, [secret(facts(5), rv="9")], {}, None, NOW + timedelta(hours=1)).events
    secret_first = [(e.dedup_key, e.occurrence) for e in first if e.involved_kind == "Secret"]
    secret_again = [(e.dedup_key, e.occurrence) for e in again if e.involved_kind == "Secret"]
    assert secret_first and secret_first == secret_again


def test_coming_back_to_a_state_another_way_is_a_new_occurrence() -> None:
    expiring = secret(facts(20))
    [first] = [
        e for e in core.evaluate(SPEC, [expiring], {}, None, NOW).events if e.involved_kind == "Secret"
    ]
    # It was recorded Valid in between (say, under a shorter threshold), and now enters the window again.
    valid = secret(facts(20), annotations={**recorded(expiring), "certcheck.dev/state": "Valid"})
    [back] = [e for e in core.evaluate(SPEC, [valid], {}, None, NOW).events if e.involved_kind == "Secret"]
    assert (back.reason, back.dedup_key) == (first.reason, first.dedup_key)
    assert back.occurrence != first.occurrence


def test_certcheck_summary_names_the_changed_certificates_and_skips_unknown_capped_ones() -> None:
    entry = CertificateStatus(
        name="s",
        key="tls.crt",
        index=0,
        state=State.VALID,
        active=True,
        not_after=core.rfc3339(NOW + timedelta(days=5)),
    )
    observed = CertCheckStatus(certificates=[entry])
    view = secret(facts(5))
    [summary] = [
        e for e in core.evaluate(SPEC, [view], {}, observed, NOW).events if e.involved_kind == "CertCheck"
    ]
    assert (summary.type, summary.reason) == ("Warning", "ExpiringSoon")
    assert summary.message.startswith("1 certificates newly expiring within 30 days: s/tls.crt[0]")
    truncated = CertCheckStatus(certificates=[], certificates_omitted=5)
    assert [
        e for e in core.evaluate(SPEC, [view], {}, truncated, NOW).events if e.involved_kind == "CertCheck"
    ] == []


def certcheck_events(evaluation: core.Evaluation) -> list[tuple[str, str]]:
    return [(e.type, e.reason) for e in evaluation.events if e.involved_kind == "CertCheck"]


def test_a_renewal_before_the_expiring_status_was_written_back_still_gives_renewed_on_the_certcheck() -> None:
    expiring = core.evaluate(SPEC, [secret(facts(5))], {}, None, NOW)
    assert certcheck_events(expiring) == [("Warning", "ExpiringSoon")]
    renewed = secret(facts(200, fingerprint="f2"), recorded(secret(facts(5))), rv="8")
    # The status of the first evaluation is not written (or not watched back) yet: nothing observed.
    assert certcheck_events(core.evaluate(SPEC, [renewed], {}, None, NOW)) == []
    after = core.evaluate(SPEC, [renewed], {}, None, NOW, told=expiring.status)
    assert certcheck_events(after) == [("Normal", "Renewed")]


def test_a_renewal_before_the_expiring_annotations_were_written_still_gives_renewed_on_the_secret() -> None:
    expiring = core.evaluate(SPEC, [secret(facts(5))], {}, None, NOW)
    renewed = secret(facts(200, fingerprint="f2"), rv="8")  # certcheck's annotations never landed
    assert secret_events(renewed) == []
    after = core.evaluate(SPEC, [renewed], {}, None, NOW, told_patches=expiring.annotation_patches)
    assert [(e.type, e.reason) for e in after.events if e.involved_kind == "Secret"] == [
        ("Normal", "Renewed")
    ]
    # The last evaluation's patch of a namesake (another uid) says nothing about this Secret.
    other = [msgspec.structs.replace(p, uid="uid-other") for p in expiring.annotation_patches]
    again = core.evaluate(SPEC, [renewed], {}, None, NOW, told_patches=other)
    assert [e for e in again.events if e.involved_kind == "Secret"] == []


def test_the_last_evaluation_not_the_older_written_status_is_the_base_of_certcheck_events() -> None:
    expiring = core.evaluate(SPEC, [secret(facts(5))], {}, None, NOW)
    valid = core.evaluate(SPEC, [secret(facts(200, fingerprint="f2"))], {}, expiring.status, NOW)
    # The Renewed summary went out with the last evaluation: evaluating again from the older written
    # status must not say it again as a new one.
    again = core.evaluate(
        SPEC, [secret(facts(200, fingerprint="f2"))], {}, expiring.status, NOW, told=valid.status
    )
    assert certcheck_events(again) == []


class TestLastEvaluationTime:
    def test_unchanged_status_keeps_its_time_and_is_not_rewritten(self) -> None:
        view = [secret(facts(100.5))]
        first = core.evaluate(SPEC, view, {}, None, NOW, refresh_after=timedelta(hours=10))
        assert first.status_changed and first.status.last_evaluation_time == core.rfc3339(NOW)
        later = NOW + timedelta(hours=1)
        second = core.evaluate(SPEC, view, {}, first.status, later, refresh_after=timedelta(hours=10))
        assert not second.status_changed
        assert second.status.last_evaluation_time == core.rfc3339(NOW)

    def test_status_is_confirmed_once_its_time_is_older_than_the_refresh_interval(self) -> None:
        view = [secret(facts(100.9))]
        first = core.evaluate(SPEC, view, {}, None, NOW, refresh_after=timedelta(hours=10))
        later = NOW + timedelta(hours=10)
        second = core.evaluate(SPEC, view, {}, first.status, later, refresh_after=timedelta(hours=10))
        assert second.status_changed and second.status.last_evaluation_time == core.rfc3339(later)


def test_dns_names_are_listed() -> None:
    named = CertFacts(
        NOW - timedelta(days=1), NOW + timedelta(days=50), "cn", "ca", "1", "f", ("a.test", "b.test")
    )
    result = core.evaluate(SPEC, [secret(named)], {}, None, NOW)
    assert result.status.certificates[0].dns_names == ["a.test", "b.test"]
