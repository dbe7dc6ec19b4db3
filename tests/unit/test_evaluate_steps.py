"""The steps ``core.evaluate`` is composed of, each on its own: rating, conditions, status, annotation
changes, CertCheck summary Events and the next due time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas import annotations as ann
from schemas.messages import CertCheckStatus, CertificateStatus, Condition, NotificationFailure, State
from services.domain import model
from services.domain.certs import CertError, CertFacts
from services.domain.times import rfc3339
from services.evaluator import annotations, conditions, events, rating, status

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SPEC = model.CertCheckSpec("ns", "check", "uid-check", 3, 30, resource_version="40")


def facts(days: float, not_before_days: float = -90, fingerprint: str = "f") -> CertFacts:
    return CertFacts(
        NOW + timedelta(days=not_before_days), NOW + timedelta(days=days), "cn", "ca", "1", fingerprint
    )


def secret(
    name: str,
    *parsed: CertFacts | CertError,
    annotations: dict[str, str] | None = None,
    kind: str = model.KUBERNETES_KIND_SECRET,
) -> model.SecretView:
    return model.SecretView(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        labels={},
        annotations=annotations or {},
        entries=tuple(model.CertEntry("tls.crt", i, p) for i, p in enumerate(parsed)),
        type="kubernetes.io/tls" if kind == model.KUBERNETES_KIND_SECRET else "",
        kind=kind,
    )


def rated(*secrets: model.SecretView, spec: model.CertCheckSpec = SPEC) -> rating.Rating:
    return rating.rate_certificates(spec, secrets, NOW)


class TestRating:
    def test_certificates_come_most_urgent_first_and_are_grouped_by_state(self) -> None:
        result = rated(
            secret("valid", facts(200)),
            secret("broken", CertError("malformed")),
            secret("expiring", facts(10), facts(20)),
            secret("expired", facts(-1)),
        )
        assert [(r.secret.name, r.state) for r in result.ordered] == [
            ("expired", State.EXPIRED),
            ("expiring", State.EXPIRING_SOON),
            ("expiring", State.EXPIRING_SOON),
            ("broken", State.INVALID),
            ("valid", State.VALID),
        ]
        assert [r.entry.index for r in result.by_state[State.EXPIRING_SOON]] == [0, 1]
        assert (result.count(State.EXPIRING_SOON), result.count(State.NOT_YET_VALID)) == (2, 0)

    def test_each_object_keeps_its_own_entries_by_kind_and_name(self) -> None:
        result = rated(
            secret("web", facts(200)), secret("web", facts(5), kind=model.KUBERNETES_KIND_CONFIGMAP)
        )
        assert [r.state for r in result.of_object[(model.KUBERNETES_KIND_SECRET, "web")]] == [State.VALID]
        assert [r.state for r in result.of_object[(model.KUBERNETES_KIND_CONFIGMAP, "web")]] == [
            State.EXPIRING_SOON
        ]

    def test_the_earliest_is_the_first_notafter_among_readable_certificates(self) -> None:
        result = rated(secret("late", facts(-1)), secret("broken", CertError("x")), secret("soon", facts(-3)))
        earliest = result.earliest()
        assert earliest is not None and earliest.label == "soon/tls.crt[0]"
        assert rated(secret("broken", CertError("x"))).earliest() is None

    def test_the_next_due_time_is_the_earliest_boundary_of_any_certificate(self) -> None:
        not_yet = facts(400, not_before_days=2)
        result = rated(secret("a", facts(45)), secret("b", not_yet), secret("c", facts(-5)))
        assert rating.next_due_time(result, 30, NOW) == NOW + timedelta(days=2)

    def test_nothing_is_due_when_every_certificate_has_expired_or_is_unreadable(self) -> None:
        result = rated(secret("a", facts(-5)), secret("b", CertError("x")))
        assert rating.next_due_time(result, 30, NOW) is None


class TestConditions:
    def test_ready_counts_what_was_evaluated_and_each_bad_state_names_examples(self) -> None:
        result = rated(*(secret(f"s{i}", facts(i + 1)) for i in range(5)))
        by_type = {c.type: c for c in conditions.certcheck_conditions(SPEC, result, 5, None, NOW)}
        assert list(by_type) == [
            "Ready",
            "ExpiringSoon",
            "Expired",
            "Invalid",
            "RenewalOverdue",
            "Weak",
            "ChainInvalid",
        ]
        assert by_type["Ready"].message == "5 certificates in 5 objects evaluated"
        expiring = by_type["ExpiringSoon"]
        assert (expiring.status, expiring.reason) == ("True", "CertificatesExpiringSoon")
        assert expiring.message.startswith("5 certificates expiring within 30 days: s0/tls.crt[0] (notAfter ")
        assert expiring.message.endswith(" and 2 more")
        assert (by_type["Expired"].status, by_type["Expired"].reason) == ("False", "NoExpired")

    def test_an_invalid_selector_makes_ready_false(self) -> None:
        spec = model.CertCheckSpec("ns", "check", "uid", 1, 30, selector_error="bad operator")
        [ready, *_] = conditions.certcheck_conditions(spec, rated(), 0, None, NOW)
        assert (ready.status, ready.reason, ready.message) == ("False", "InvalidSelector", "bad operator")

    def test_a_condition_keeps_its_transition_time_while_its_status_stays(self) -> None:
        before = Condition("Expired", "False", "NoExpired", "", "2026-01-01T00:00:00Z", 3)
        observed = CertCheckStatus(conditions=[before])
        kept = conditions.certcheck_conditions(SPEC, rated(secret("a", facts(100))), 1, observed, NOW)
        flipped = conditions.certcheck_conditions(SPEC, rated(secret("a", facts(-1))), 1, observed, NOW)
        assert next(c for c in kept if c.type == "Expired").last_transition_time == "2026-01-01T00:00:00Z"
        assert next(c for c in flipped if c.type == "Expired").last_transition_time == rfc3339(NOW)

    def test_notification_failed_appears_with_a_failure_and_turns_false_once_it_clears(self) -> None:
        assert not any(
            c.type == "NotificationFailed"
            for c in conditions.certcheck_conditions(SPEC, rated(), 0, CertCheckStatus(), NOW)
        )
        failure = NotificationFailure(target="slack", reason="HTTP 404", since="2026-05-01T00:00:00Z")
        failing = CertCheckStatus(notification_failures=[failure])
        [*_, failed] = conditions.certcheck_conditions(SPEC, rated(), 0, failing, NOW)
        assert (failed.type, failed.status, failed.message) == (
            "NotificationFailed",
            "True",
            "slack: HTTP 404",
        )
        cleared = CertCheckStatus(conditions=[failed])
        [*_, delivered] = conditions.certcheck_conditions(SPEC, rated(), 0, cleared, NOW)
        assert (delivered.type, delivered.status, delivered.reason) == (
            "NotificationFailed",
            "False",
            "Delivered",
        )


class TestStatus:
    def test_counts_the_earliest_and_the_capped_list_with_what_it_leaves_out(self) -> None:
        result = rated(secret("a", facts(5), facts(50)), secret("b", CertError("x")), secret("c", facts(-2)))
        written = status.certcheck_status(SPEC, 3, result, [], None, NOW, status_cap=2)
        assert (written.target_secrets_count, written.target_certs_count) == (3, 4)
        assert (written.valid_count, written.expiring_soon_count, written.expired_count) == (1, 1, 1)
        assert written.invalid_count == 1
        assert (written.earliest_certificate, written.earliest_not_after) == (
            "c/tls.crt[0]",
            rfc3339(NOW + timedelta(days=-2)),
        )
        assert [c.name for c in written.certificates] == ["c", "a"]
        assert written.certificates_omitted == 2
        assert written.observed_generation == 3 and written.last_evaluation_time is None

    def test_the_list_stops_where_the_byte_budget_ends_whatever_the_cap(self) -> None:
        entry = CertificateStatus(name="s" * 1000, key="tls.crt", index=0, state=State.VALID, active=True)
        kept = status.within_budget([entry] * 1000)
        assert 0 < len(kept) < 1000
        assert len(kept) * 1000 <= status.STATUS_MAX_BYTES

    def test_the_notification_failures_stay_as_the_notifier_recorded_them(self) -> None:
        failure = NotificationFailure(target="slack", reason="HTTP 404", since="2026-05-01T00:00:00Z")
        observed = CertCheckStatus(notification_failures=[failure])
        assert status.certcheck_status(SPEC, 0, rated(), [], observed, NOW).notification_failures == [failure]

    def test_an_unchanged_fresh_status_is_not_written_and_keeps_its_time(self) -> None:
        written = status.certcheck_status(SPEC, 1, rated(secret("a", facts(100))), [], None, NOW)
        first, changed = status.stamped(written, None, NOW, None)
        assert changed and first.last_evaluation_time == rfc3339(NOW)
        again, changed = status.stamped(written, first, NOW + timedelta(hours=1), timedelta(hours=2))
        assert not changed and again.last_evaluation_time == rfc3339(NOW)

    def test_a_status_stamped_in_the_future_or_too_long_ago_is_written_again(self) -> None:
        written = status.certcheck_status(SPEC, 0, rated(), [], None, NOW)
        ahead = status.stamped(written, None, NOW + timedelta(hours=1), None)[0]
        assert status.stamped(written, ahead, NOW, None)[1]
        old = status.stamped(written, None, NOW - timedelta(hours=3), None)[0]
        assert status.stamped(written, old, NOW, timedelta(hours=2))[1]


class TestAnnotationChanges:
    def test_configmaps_are_never_annotated(self) -> None:
        views = [secret("web", facts(5), kind=model.KUBERNETES_KIND_CONFIGMAP), secret("web", facts(200))]
        outcomes = annotations.secret_outcomes(SPEC, views, {}, rated(*views), NOW)
        assert [(o.secret.kind, o.secret.name) for o in outcomes] == [(model.KUBERNETES_KIND_SECRET, "web")]

    def test_a_secret_without_coverage_is_covered_by_the_certcheck_alone(self) -> None:
        view = secret("a", facts(20))
        [outcome] = annotations.secret_outcomes(SPEC, [view], {}, rated(view), NOW)
        assert outcome.coverage == model.Coverage(("check",), 30)
        assert outcome.patch is not None and outcome.patch.annotations[ann.CHECKED_BY] == "check"

    def test_the_secret_is_rated_at_the_largest_threshold_of_its_coverage(self) -> None:
        view = secret("a", facts(20))
        strict = model.CertCheckSpec("ns", "strict", "uid", 1, 7)
        coverage = {"a": model.Coverage(("strict", "wide"), 30)}
        [outcome] = annotations.secret_outcomes(strict, [view], coverage, rated(view, spec=strict), NOW)
        assert outcome.patch is not None
        assert outcome.patch.annotations[ann.STATE] == State.EXPIRING_SOON

    def test_annotations_that_say_it_already_need_no_patch(self) -> None:
        coverage = model.Coverage(("check",), 30)
        said = annotations.desired_annotations(secret("a", facts(20)), coverage, NOW)
        view = secret("a", facts(20), annotations={k: v for k, v in said.items() if v is not None})
        [outcome] = annotations.secret_outcomes(SPEC, [view], {"a": coverage}, rated(view), NOW)
        assert outcome.patch is None

    def test_a_secret_without_certificates_is_recorded_invalid_without_dates(self) -> None:
        desired = annotations.desired_annotations(secret("empty"), model.Coverage(("check",), 30), NOW)
        assert desired == {
            ann.STATE: "Invalid",
            ann.CHECKED_BY: "check",
            ann.NOT_AFTER: None,
            ann.NOT_BEFORE: None,
            ann.PROBLEMS: None,
        }


class TestSummaryEvents:
    def test_a_certificate_entering_a_state_gives_one_summary_per_reason(self) -> None:
        result = rated(secret("a", facts(5)), secret("b", facts(6)), secret("c", facts(-1)))
        found = events.summary_events(SPEC, result.ordered, None)
        assert sorted((e.reason, e.message.split(":")[0]) for e in found) == [
            ("Expired", "1 certificates newly expired"),
            ("ExpiringSoon", "2 certificates newly expiring within 30 days"),
        ]
        assert {e.occurrence for e in found} == {"40"}

    def test_only_the_entries_a_capped_status_listed_are_compared(self) -> None:
        listed = CertificateStatus(
            name="a", key="tls.crt", index=0, state=State.VALID, active=True, not_after=rfc3339(NOW)
        )
        base = CertCheckStatus(certificates=[listed], certificates_omitted=1)
        result = rated(secret("a", facts(5)), secret("b", facts(-1)))
        [summary] = events.summary_events(SPEC, result.ordered, base)
        assert (summary.reason, summary.message.split(": ")[1]) == (
            "ExpiringSoon",
            f"a/tls.crt[0] (notAfter {rfc3339(NOW + timedelta(days=5))})",
        )


DAY = 86400


@given(
    st.one_of(st.integers(-3 * DAY, 5 * DAY), st.integers(-400 * DAY, 400 * DAY)),  # notAfter - now, s
    st.integers(-2 * DAY, 3 * DAY),  # notBefore - now, s (no later than notAfter)
    st.lists(st.integers(0, 3 * DAY), min_size=2, max_size=20),  # the moments evaluated, s from now
)
def test_a_status_entry_reused_while_it_holds_is_the_entry_worked_out_anew(
    not_after: int, not_before: int, moments: list[int]
) -> None:
    """Across whole days remaining, notBefore and notAfter, the entry kept with its rating is the entry
    certificate_status works out at that moment."""
    cert = CertFacts(
        NOW + timedelta(seconds=min(not_before, not_after)),
        NOW + timedelta(seconds=not_after),
        "cn",
        "ca",
        "1",
        "f",
    )
    rated = rating.Rated(secret("s"), model.CertEntry("tls.crt", 0, cert), State.VALID)
    for moment in sorted(moments):
        now = NOW + timedelta(seconds=moment)
        assert status.shown(rated, now)[0] == status.certificate_status(rated, now)


def test_a_status_entry_turns_over_at_the_moment_a_whole_day_passes() -> None:
    rated = rating.Rated(secret("s"), model.CertEntry("tls.crt", 0, facts(10)), State.VALID)
    assert status.shown(rated, NOW)[0].days_remaining == 10
    assert status.shown(rated, NOW + timedelta(microseconds=1))[0].days_remaining == 9
