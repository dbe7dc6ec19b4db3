"""The inventory page from a view: one row per certificate in its most urgent state, most urgent first,
filters, a page per object, hostile names escaped, nothing but certificate metadata."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.messages import CertSource, LabelSelector, State
from services.domain.view import View
from services.exporter.page import entries, inventory, object_page, selected
from tests import pki
from tests.sources import certcheck_observed, facts_source, tls_secret_observed

NOW = datetime.now(UTC)


def view() -> View:
    found = View()
    labels = {"app": "x"}
    found.apply(1, certcheck_observed("wide", threshold_days=30, selector=LabelSelector(match_labels=labels)))
    found.apply(
        2, certcheck_observed("narrow", threshold_days=1, selector=LabelSelector(match_labels=labels))
    )
    for seq, (name, days) in enumerate((("valid", 200), ("soon", 10), ("gone", -0.5)), start=3):
        cert = pki.issue(f"{name}.test", pki.ec_key(), pki.ca("Issuer <One>"), days=days)
        found.apply(seq, tls_secret_observed(name, facts_source("tls.crt", pki.pem(cert)), labels=labels))
    broken = CertSource("tls.crt", error="<script>alert(1)</script> is no certificate")
    found.apply(9, tls_secret_observed("<b>odd</b>", broken, labels=labels))
    return found


def test_one_row_per_certificate_in_its_most_urgent_state_most_urgent_first() -> None:
    found = entries([view()], NOW)
    assert [(e.name, e.state) for e in found] == [
        ("gone", State.EXPIRED),
        ("soon", State.EXPIRING_SOON),  # by the 30-day CertCheck; the 1-day one calls it Valid
        ("<b>odd</b>", State.INVALID),
        ("valid", State.VALID),
    ]
    assert found[1].certchecks == ("narrow", "wide")


def test_filters_by_namespace_state_issuer_and_text() -> None:
    found = entries([view()], NOW)
    assert [e.name for e in selected(found, {"state": "Expired"})] == ["gone"]
    assert [e.name for e in selected(found, {"q": "SOON"})] == ["soon"]
    assert len(selected(found, {"issuer": "Issuer <One>"})) == 3
    assert selected(found, {"namespace": "elsewhere"}) == []


def test_the_page_escapes_what_objects_hold_and_lists_in_order() -> None:
    page = inventory(entries([view()], NOW), {}, NOW).decode()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;odd&lt;/b&gt;" in page
    assert page.index(">gone<") < page.index(">soon<") < page.index(">valid<")
    assert "4 of 4 certificates" in page
    assert 'class="state-Expired"' in page and "http" not in page.split("<body>")[0]  # no external asset
    filtered = inventory(entries([view()], NOW), {"state": "ExpiringSoon"}, NOW).decode()
    assert "1 of 4 certificates" in filtered and '<option value="ExpiringSoon" selected>' in filtered


def test_an_objects_page_lists_its_certificates_and_an_unknown_one_is_none() -> None:
    found = entries([view()], NOW)
    page = object_page(found, "ns", "Secret", "soon", NOW)
    assert page is not None and b"Secret ns/soon" in page and b"soon.test" in page
    assert object_page(found, "ns", "Secret", "nothing", NOW) is None
    assert entries([view()], NOW + timedelta(days=11))[1].state == State.EXPIRED
