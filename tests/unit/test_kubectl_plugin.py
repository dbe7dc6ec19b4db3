"""The kubectl plugin's pure parts: the inventory built from statuses and annotations (one row per
certificate, most urgent first, filtered, rendered), and ``check`` of local files of every format."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, pkcs12

from schemas import annotations as ann
from services.kubectl.check import check, render_check
from services.kubectl.inventory import Inventory, render, selected
from tests import pki
from tests.hostile import malformed
from tests.hostile import pem as pem_of_der

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def certcheck(namespace: str, name: str, *entries: dict[str, Any], omitted: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "status": {"certificates": list(entries), "certificatesOmitted": omitted},
    }


def entry(name: str, state: str, days: float | None, key: str = "tls.crt", **more: Any) -> dict[str, Any]:
    found = {"name": name, "key": key, "index": 0, "state": state, "active": True, **more}
    if days is not None:
        found["notAfter"] = at(days)
    return found


def secret(namespace: str, name: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations}}


def inventory() -> Inventory:
    found = Inventory()
    found.add_status(
        certcheck("shop", "web", entry("web-tls", "ExpiringSoon", 5), entry("api-tls", "Valid", 200))
    )
    found.add_status(certcheck("shop", "all", entry("web-tls", "ExpiringSoon", 5), omitted=3))
    found.add_status(
        certcheck("ops", "db", entry("db-tls", "Expired", -2), entry("bad", "Invalid", None, reason="no PEM"))
    )
    cluster = {
        "metadata": {"name": "fleet"},
        "status": {
            "certificates": [
                entry("guard", "ExpiringSoon", 1, key="a.guard.test", kind="ValidatingWebhookConfiguration"),
                entry("web-tls", "ExpiringSoon", 5, namespace="shop"),
            ]
        },
    }
    found.add_status(cluster, cluster=True)
    # Known from its annotations alone (the statuses list only their most urgent).
    found.add_annotated(
        secret("ops", "old-tls", **{ann.STATE: "Valid", ann.NOT_AFTER: at(90), ann.CHECKED_BY: "db"})
    )
    found.add_annotated(secret("shop", "web-tls", **{ann.STATE: "ExpiringSoon"}))  # listed already
    found.add_annotated(secret("shop", "plain"))  # certcheck never annotated it
    return found


def test_one_row_per_certificate_naming_every_check_that_lists_it_most_urgent_first() -> None:
    rows = inventory().sorted()
    assert [(r.namespace, r.name) for r in rows] == [
        ("ops", "db-tls"),
        ("", "guard"),
        ("shop", "web-tls"),
        ("ops", "bad"),
        ("ops", "old-tls"),
        ("shop", "api-tls"),
    ]
    web = rows[2]
    assert web.checked_by == ("shop/web", "shop/all", "clustercertcheck/fleet")
    assert web.days_remaining(NOW) == 5
    assert rows[4].key == "" and rows[4].checked_by == ("db",)
    assert inventory().omitted == 3


def test_filters_by_namespace_state_and_days() -> None:
    rows = inventory().sorted()
    assert [r.name for r in selected(rows, NOW, namespace="shop")] == ["web-tls", "api-tls"]
    assert [r.name for r in selected(rows, NOW, states=["expired", "Invalid"])] == ["db-tls", "bad"]
    assert [r.name for r in selected(rows, NOW, within_days=5)] == ["db-tls", "guard", "web-tls"]


def test_table_wide_json_and_yaml() -> None:
    rows = inventory().sorted()
    lines = render(rows, "table", NOW).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "KEY", "STATE", "DAYS", "NOT", "AFTER"]
    assert lines[1].split()[:5] == ["ops", "db-tls", "tls.crt", "Expired", "-2"]
    assert "ValidatingWebhookConfiguration" in render(rows, "wide", NOW)
    as_json = json.loads(render(rows, "json", NOW))
    assert as_json[2]["checkedBy"] == ["shop/web", "shop/all", "clustercertcheck/fleet"]
    assert "namespace" not in as_json[1]  # cluster-scoped
    assert yaml.safe_load(render(rows, "yaml", NOW)) == as_json
    assert render([], "table", NOW) == "No certificates found."


def test_a_status_edited_into_another_shape_is_skipped_not_a_crash() -> None:
    found = Inventory()
    found.add_status({"metadata": {"name": "x"}, "status": {"certificates": [{"name": "a"}, "junk", None]}})
    found.add_status({"metadata": {}, "status": {"certificatesOmitted": "many"}})
    assert found.sorted() == [] and found.omitted == 0


def test_check_reads_pem_der_and_pkcs12_with_the_watchers_rules() -> None:
    weak_key = pki.rsa_key(1024)
    weak = pki.issue("weak.test", weak_key, days=5)
    [row] = check("weak.pem", pki.pem(weak), datetime.now(UTC))
    assert (row.state, row.subject) == ("ExpiringSoon", "weak.test")
    assert row.problems == ("RSA key of 1024 bits, below 2048",)
    key = pki.ec_key()
    fine = pki.issue("fine.test", key, days=300)
    assert [r.state for r in check("fine.der", fine.public_bytes(Encoding.DER), datetime.now(UTC))] == [
        "Valid"
    ]
    bundle = pkcs12.serialize_key_and_certificates(b"x", key, fine, None, BestAvailableEncryption(b"s3cret"))
    assert [r.state for r in check("store.p12", bundle, datetime.now(UTC), password=b"s3cret")] == ["Valid"]
    [wrong] = check("store.p12", bundle, datetime.now(UTC), password=b"nope")
    assert wrong.state == "Invalid" and wrong.reason and "password" in wrong.reason
    assert "password" in render_check([wrong], "table", datetime.now(UTC))
    assert [r.state for r in check("soon.pem", pki.pem(fine), datetime.now(UTC), threshold_days=400)] == [
        "ExpiringSoon"
    ]


@pytest.mark.parametrize(("case", "value"), list(malformed().items()))
def test_check_says_why_a_malformed_certificate_cannot_be_read(case: str, value: bytes) -> None:
    # The same tolerance as the watcher's (tests/unit/test_hostile_input.py): display-only fields.
    tolerated = {
        "SAN extension holds garbage",
        "SAN holds a DNS name that is not ASCII",
        "the same extension twice",
        "basicConstraints is garbage",
        "key usage holds a BOOLEAN",
    }
    for form in (value, pem_of_der(value).encode()):
        rows = check("input.pem", form, NOW)
        assert rows and all((r.state == "Invalid" and r.reason) or case in tolerated for r in rows), (
            case,
            rows,
        )
