"""A renewal that stalls, end to end: a Secret cert-manager manages whose certificate is not replaced is
RenewalOverdue at the moment its renewal is an hour late (a scheduled evaluation, nothing else changes):
status, condition, annotation, a Warning Event and a notification; its replacement clears it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client

from devcluster.certs import make_cert, tls_secret_data
from schemas import annotations as ann
from services.domain.states import RENEWAL_GRACE
from tests.conftest import Cluster, wait_for
from tests.receivers import Receiver

LIFETIME = timedelta(days=90)
DUE_IN = timedelta(seconds=8)


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def overdue_in(delay: timedelta) -> tuple[bytes, bytes]:
    not_before = (datetime.now(UTC) + delay - RENEWAL_GRACE - LIFETIME * 2 / 3).replace(microsecond=0)
    return make_cert("web.test", not_before + LIFETIME, not_before)


def test_a_managed_certificate_not_renewed_in_time_is_overdue_at_that_moment_until_it_is_replaced(
    cluster: Cluster, namespace: str, webhook: Receiver
) -> None:
    cert, key = overdue_in(DUE_IN)
    due_at = time.time() + DUE_IN.total_seconds()
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="web-tls",
                labels={"app": "web"},
                annotations={ann.CERT_MANAGER_CERTIFICATE: "web"},
            ),
            type="kubernetes.io/tls",
            data=tls_secret_data(cert, key),
        ),
    )
    notification = {"targets": [{"name": "hook", "webhook": {"url": f"{webhook.url}/hook"}}]}
    cluster.create_certcheck(
        namespace, "c", {"matchLabels": {"app": "web"}}, threshold=7, notification=notification
    )
    cluster.wait_status(namespace, "c", validCount=1)
    assert time.time() < due_at, "the test machine was too slow to see the certificate Valid first"

    status = cluster.wait_status(namespace, "c", timeout=30, renewalOverdueCount=1)
    seen_at = time.time()
    assert seen_at - due_at < 10, "the state came late: not by the scheduled evaluation"
    assert status["certificates"][0]["state"] == "RenewalOverdue"
    condition = {c["type"]: c for c in status["conditions"]}["RenewalOverdue"]
    assert (condition["status"], condition["reason"]) == ("True", "CertificatesRenewalOverdue")
    wait_for(
        lambda: cluster.annotations(namespace, "web-tls").get(ann.STATE) == "RenewalOverdue",
        what="annotation",
    )
    [warning] = wait_for(
        lambda: [e for e in cluster.events(namespace, "Secret", "web-tls") if e.reason == "RenewalOverdue"],
        what="the Warning Event",
    )
    assert warning.type == "Warning"
    [delivered] = wait_for(lambda: webhook.accepted(), what="the notification")
    [notice] = delivered.json()["certificates"]
    assert (notice["state"], notice["change"]) == ("RenewalOverdue", "firing")

    renewed, renewed_key = make_cert("web.test", datetime.now(UTC) + timedelta(days=89))
    cluster.core.patch_namespaced_secret(
        "web-tls", namespace, {"data": tls_secret_data(renewed, renewed_key)}
    )
    cluster.wait_status(namespace, "c", timeout=30, renewalOverdueCount=0, validCount=1)
    wait_for(
        lambda: [e for e in cluster.events(namespace, "Secret", "web-tls") if e.reason == "Renewed"],
        what="the Renewed Event",
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_certificates_own_renewal_time_is_the_renewal_point_unless_it_is_not_this_certificates(
    cluster: Cluster, namespace: str
) -> None:
    """With cert-manager's Certificates readable, a managed Secret is overdue an hour after its
    Certificate's status.renewalTime (here weeks before the two-thirds point); a renewalTime outside the
    certificate's validity speaks of another certificate and is ignored."""
    cert, key = make_cert("web.test", datetime.now(UTC) + timedelta(days=80))  # two thirds: weeks away
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="web-tls", labels={"app": "web"}, annotations={ann.CERT_MANAGER_CERTIFICATE: "web"}
            ),
            type="kubernetes.io/tls",
            data=tls_secret_data(cert, key),
        ),
    )
    certificates = ("cert-manager.io", "v1", namespace, "certificates")
    cluster.custom.create_namespaced_custom_object(
        *certificates,
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": "web"},
            "spec": {"secretName": "web-tls", "dnsNames": ["web.test"]},
        },
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "web"}}, threshold=7)
    cluster.wait_status(namespace, "c", validCount=1)

    due_at = datetime.now(UTC) + DUE_IN
    cluster.custom.patch_namespaced_custom_object_status(
        *certificates, "web", {"status": {"renewalTime": _rfc3339(due_at - RENEWAL_GRACE)}}
    )
    cluster.wait_status(namespace, "c", timeout=30, renewalOverdueCount=1)
    assert datetime.now(UTC) - due_at < timedelta(seconds=10), "late: not by the scheduled evaluation"
    assert datetime.now(UTC) >= due_at.replace(microsecond=0), "early: before the renewal time's grace"
    wait_for(
        lambda: cluster.annotations(namespace, "web-tls").get(ann.STATE) == "RenewalOverdue",
        what="annotation",
    )

    beyond = datetime.now(UTC) + timedelta(days=120)  # after this certificate's notAfter
    cluster.custom.patch_namespaced_custom_object_status(
        *certificates, "web", {"status": {"renewalTime": _rfc3339(beyond)}}
    )
    cluster.wait_status(namespace, "c", timeout=30, renewalOverdueCount=0, validCount=1)
