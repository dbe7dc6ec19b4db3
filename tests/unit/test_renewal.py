"""A renewal that stalls: a certificate cert-manager manages, not replaced an hour after two thirds of its
lifetime, is RenewalOverdue from that moment (scheduled), weeks before its threshold."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec

from schemas import annotations as ann
from schemas import subjects
from schemas.messages import CertificateObserved, LabelSelector, ObjectDeleted, State
from services.domain.certs import CertFacts
from services.domain.model import CertCheckSpec, CertEntry, Coverage, SecretView, renew_by
from services.domain.states import RENEWAL_GRACE, classify, renewal_overdue_at
from services.domain.view import View
from services.evaluator import core
from services.exporter.collector import families
from services.watcher.extract import RawCertificate, certificate_observed
from tests import pki
from tests.sources import certcheck_observed, facts_source, tls_secret_observed

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(days=90)
SPEC = CertCheckSpec("ns", "check", "uid-check", 1, 7)


def facts_overdue_at(moment: datetime) -> CertFacts:
    """A 90-day certificate whose renewal is overdue at ``moment``."""
    not_before = moment - RENEWAL_GRACE - LIFETIME * 2 / 3
    return CertFacts(not_before, not_before + LIFETIME, "web.test", "ca", "1", "f")


def secret(
    facts: CertFacts, managed_by: str | None = "web", annotations: dict[str, str] | None = None
) -> SecretView:
    return SecretView(
        namespace="ns",
        name="web-tls",
        uid="uid-web",
        labels={},
        annotations=annotations or {},
        entries=(CertEntry("tls.crt", 0, facts), CertEntry("ca.crt", 0, facts)),
        managed_by=managed_by,
    )


def evaluate(view: SecretView) -> core.Evaluation:
    return core.evaluate(SPEC, [view], {view.name: Coverage(("check",), 7)}, None, NOW)


def test_a_managed_certificate_is_overdue_from_its_moment_on_and_expiring_soon_still_comes_first() -> None:
    facts = facts_overdue_at(NOW)
    overdue_at = renewal_overdue_at(facts)
    assert overdue_at == NOW
    assert classify(facts, 7, NOW - timedelta(seconds=1), overdue_at) == State.VALID
    assert classify(facts, 7, NOW, overdue_at) == State.RENEWAL_OVERDUE
    assert classify(facts, 7, NOW, None) == State.VALID  # not managed: nothing to wait for
    assert classify(facts, 40, NOW, overdue_at) == State.EXPIRING_SOON


def test_an_overdue_renewal_is_a_state_a_condition_an_annotation_and_a_warning_on_the_secret() -> None:
    evaluation = evaluate(secret(facts_overdue_at(NOW - timedelta(minutes=5))))
    status = evaluation.status
    # Only the leaf cert-manager renews is overdue; its ca.crt, with the same dates, is not.
    assert [(c.key, c.state) for c in status.certificates] == [
        ("tls.crt", State.RENEWAL_OVERDUE),
        ("ca.crt", State.VALID),
    ]
    assert (status.renewal_overdue_count, status.valid_count) == (1, 1)
    condition = {c.type: c for c in status.conditions}["RenewalOverdue"]
    assert (condition.status, condition.reason) == ("True", "CertificatesRenewalOverdue")
    [patch] = evaluation.annotation_patches
    assert patch.annotations[ann.STATE] == "RenewalOverdue"
    [warning] = [e for e in evaluation.events if e.involved_kind == "Secret"]
    assert (warning.type, warning.reason) == ("Warning", "RenewalOverdue")
    assert "was not renewed" in warning.message


def test_the_renewal_moment_is_scheduled_for_a_managed_certificate_only() -> None:
    overdue_at = NOW + timedelta(days=3, seconds=1)
    assert evaluate(secret(facts_overdue_at(overdue_at))).next_due == overdue_at
    unmanaged = evaluate(secret(facts_overdue_at(overdue_at), managed_by=None)).next_due
    assert unmanaged is not None and unmanaged > overdue_at + timedelta(days=20)


def test_a_renewal_clears_it_with_a_renewed_event() -> None:
    overdue = secret(facts_overdue_at(NOW - timedelta(hours=2)), annotations={})
    recorded = {k: v for k, v in evaluate(overdue).annotation_patches[0].annotations.items() if v is not None}
    renewed = secret(facts_overdue_at(NOW + timedelta(days=60)), annotations=recorded)
    evaluation = evaluate(renewed)
    assert evaluation.status.renewal_overdue_count == 0
    assert [e.reason for e in evaluation.events if e.involved_kind == "Secret"] == ["Renewed"]


def test_the_exporter_serves_the_overdue_series_for_managed_certificates_only() -> None:
    view = View()
    view.apply(1, certcheck_observed(threshold_days=7))
    from devcluster.certs import make_cert

    now = datetime.now(UTC)
    not_before = now - RENEWAL_GRACE - LIFETIME * 2 / 3 - timedelta(minutes=1)
    cert, _ = make_cert("web.test", not_before + LIFETIME, not_before)
    for seq, name, managed in ((2, "managed", "web"), (3, "plain", None)):
        view.apply(seq, tls_secret_observed(name, facts_source("tls.crt", cert), certificate_name=managed))
    found = {m.name: [(s.labels, s.value) for s in m.samples] for m in families([view], now)}
    overdue = [
        (labels["secret_name"], value) for labels, value in found["certcheck_certificate_renewal_overdue"]
    ]
    assert overdue == [("managed", 1.0)]
    by_state = {labels["state"]: value for labels, value in found["certcheck_certcheck_certificates"]}
    assert (by_state["RenewalOverdue"], by_state["Valid"]) == (1, 1)


# --- the Certificate's own renewalTime ----------------------------------------------------------------


def certificate(
    renewal_time: datetime | None, secret_name: str = "web-tls", rv: str = "1", name: str = "web"
) -> CertificateObserved:
    return CertificateObserved("ns", name, f"uid-{name}", rv, secret_name, renewal_time)


def test_the_certificates_renewal_time_within_this_certificates_validity_is_the_renewal_point() -> None:
    facts = facts_overdue_at(NOW + timedelta(days=20))  # by cert-manager's default
    planned = NOW - timedelta(hours=2)
    view = dataclasses.replace(secret(facts), renewal_time=planned)
    assert renew_by(view, view.entries[0]) == planned + RENEWAL_GRACE
    assert renew_by(view, view.entries[1]) is None  # ca.crt: not what cert-manager renews
    for elsewhere in (facts.not_after + timedelta(seconds=1), facts.not_before - timedelta(seconds=1)):
        stale = dataclasses.replace(view, renewal_time=elsewhere)  # another certificate's
        assert renew_by(stale, stale.entries[0]) == renewal_overdue_at(facts)
    unmanaged = dataclasses.replace(view, managed_by=None)
    assert renew_by(unmanaged, unmanaged.entries[0]) is None


def test_the_view_joins_a_certificate_to_the_secret_it_writes_whichever_comes_first() -> None:
    pem = pki.pem(pki.issue("web.test", pki.ec_key(), days=80))
    managed = tls_secret_observed(
        "web-tls", facts_source("tls.crt", pem), labels={"app": "web"}, certificate_name="web"
    )
    planned = NOW + timedelta(days=3)
    view = View()
    view.apply(1, certcheck_observed(selector=LabelSelector(match_labels={"app": "web"})))
    view.apply(2, managed)
    key = ("ns", "check")
    assert view.apply(3, certificate(planned)).evaluate == {key}
    assert view.secrets.get("ns", "web-tls").view.renewal_time == planned  # type: ignore[union-attr]
    assert view.apply(4, certificate(planned, rv="2")).evaluate == set()  # nothing changed for it
    assert view.apply(5, msgspec.structs.replace(managed, resource_version="9")).evaluate == set()
    assert view.secrets.get("ns", "web-tls").view.renewal_time == planned  # type: ignore[union-attr]
    assert view.apply(6, certificate(planned, rv="1")).evaluate == set()  # older: ignored

    # Another Certificate naming the Secret, though the Secret names "web": not its renewal time.
    view.apply(7, certificate(NOW, name="other"))
    assert view.secrets.get("ns", "web-tls").view.renewal_time == planned  # type: ignore[union-attr]

    deleted = ObjectDeleted(subjects.KIND_CERTIFICATE, "ns", "web", "uid-web", "3")
    assert view.apply(8, deleted).evaluate == {key}
    assert view.secrets.get("ns", "web-tls").view.renewal_time is None  # type: ignore[union-attr]

    fresh = View()  # the Certificate first, then its Secret
    fresh.apply(1, certificate(planned))
    fresh.apply(2, managed)
    assert fresh.secrets.get("ns", "web-tls").view.renewal_time == planned  # type: ignore[union-attr]


def test_a_certificate_that_moves_to_another_secret_leaves_the_first_one_its_default() -> None:
    view = View()
    view.apply(1, tls_secret_observed("web-tls", certificate_name="web"))
    view.apply(2, certificate(NOW))
    view.apply(3, certificate(NOW, secret_name="web-tls-2", rv="2"))
    assert view.secrets.get("ns", "web-tls").view.renewal_time is None  # type: ignore[union-attr]


def test_a_certificates_unreadable_renewal_time_is_none() -> None:
    raw = msgspec.convert(
        {
            "metadata": {"name": "web", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
            "spec": {"secretName": "web-tls"},
            "status": {"renewalTime": "next tuesday"},
        },
        RawCertificate,
    )
    observed = certificate_observed(raw)
    assert (observed.secret_name, observed.renewal_time) == ("web-tls", None)
