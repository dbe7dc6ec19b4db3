"""The CertCheck status: bounded, exact, and conditions that move only when they change."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from tests.conftest import Cluster, wait_for


def test_status_of_2000_secrets_is_capped_sorted_by_urgency_and_counts_are_exact(
    cluster: Cluster, namespace: str
) -> None:
    now = datetime.now(UTC)
    # 2,000 Secrets: 5 expired, 60 expiring within 30 days, 1,935 valid; the status lists the 10 most urgent.
    plan = [(f"s{i:04d}", -1 - i if i < 5 else 5 + i % 20 if i < 65 else 60 + i % 300) for i in range(2000)]

    def create(item: tuple[str, int]) -> None:
        name, days = item
        cert, key = make_cert(f"{name}.test", now + timedelta(days=days, hours=1))
        cluster.core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels={"fleet": "big"}),
                type="kubernetes.io/tls",
                data=tls_secret_data(cert, key),
            ),
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, plan))
    cluster.create_certcheck(namespace, "big", {"matchLabels": {"fleet": "big"}})
    status: dict[str, Any] = cluster.wait_status(namespace, "big", timeout=60, targetCertsCount=2000)
    assert (status["expiredCount"], status["expiringSoonCount"], status["validCount"]) == (5, 60, 1935)
    assert len(status["certificates"]) == 10 and status["certificatesOmitted"] == 1990
    states = [c["state"] for c in status["certificates"]]
    assert states == ["Expired"] * 5 + ["ExpiringSoon"] * 5
    expired, expiring = (
        [c["notAfter"] for c in status["certificates"][:5]],
        [c["notAfter"] for c in status["certificates"][5:]],
    )
    assert expired == sorted(expired) and expiring == sorted(expiring)
    # the soonest to expire of the 60: three in 5 days, three in 6
    assert all(datetime.fromisoformat(t) < now + timedelta(days=6, hours=2) for t in expiring)
    response = cluster.custom.get_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "big", _preload_content=False
    )
    body = response.data
    assert len(body) < 16_000, "a status of 10 entries is about 5 KiB (each write costs in proportion)"


def test_conditions_move_only_when_their_status_changes(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})

    def condition(kind: str) -> dict[str, Any]:
        return next(c for c in cluster.status(namespace, "c").get("conditions", []) if c["type"] == kind)

    wait_for(lambda: cluster.status(namespace, "c").get("conditions"), what="conditions")
    expiring = condition("ExpiringSoon")
    assert (expiring["status"], expiring["reason"]) == ("True", "CertificatesExpiringSoon")
    assert "s/tls.crt[0]" in expiring["message"]
    ready_since = condition("Ready")["lastTransitionTime"]

    renewed, renewed_key = expiring_in(300)
    cluster.core.patch_namespaced_secret("s", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(lambda: condition("ExpiringSoon")["status"] == "False", what="ExpiringSoon False")
    after = condition("ExpiringSoon")
    assert after["reason"] == "NoExpiringSoon"
    assert after["lastTransitionTime"] >= expiring["lastTransitionTime"]
    assert condition("Ready")["lastTransitionTime"] == ready_since  # Ready stayed True: it did not move


def test_a_certcheck_over_5000_unannotated_secrets_and_a_5000_name_certificate_is_recorded(
    cluster: Cluster, namespace: str
) -> None:
    now = datetime.now(UTC)
    cert, key = make_cert("fleet.test", now + timedelta(days=200))
    wide, wide_key = make_cert(
        "wide.test", now + timedelta(days=10), dns_names=tuple(f"h{i}.wide.test" for i in range(5000))
    )

    def create(index: int) -> None:
        pem, pem_key = (wide, wide_key) if index == 0 else (cert, key)
        cluster.core.create_namespaced_secret(
            namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=f"s{index:04d}", labels={"fleet": "huge"}),
                type="kubernetes.io/tls",
                data=tls_secret_data(pem, pem_key),
            ),
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(5000)))
    # One result would carry 5,000 annotation patches: more than a bus message holds.
    cluster.create_certcheck(namespace, "huge", {"matchLabels": {"fleet": "huge"}})
    status: dict[str, Any] = cluster.wait_status(namespace, "huge", timeout=90, targetCertsCount=5000)
    assert (status["expiringSoonCount"], status["validCount"]) == (1, 4999)
    first = status["certificates"][0]
    assert first["name"] == "s0000" and len(first["dnsNames"]) == 10

    def annotated() -> int:
        secrets = cluster.core.list_namespaced_secret(namespace, label_selector="fleet=huge").items
        return sum(1 for s in secrets if (s.metadata.annotations or {}).get("certcheck.dev/state"))

    wait_for(lambda: annotated() == 5000 or None, timeout=90, what="every Secret annotated")
