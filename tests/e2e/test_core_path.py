"""The core path end to end: Secret -> watcher -> NATS -> evaluator -> recorder -> Kubernetes."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import nats
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import Stack
from schemas.streams import KUBE_EVENTS, RECORDER_EVENTS_CONSUMER
from tests.conftest import Cluster, wait_for


def cert_entries(status: dict[str, object], secret: str) -> list[dict[str, object]]:
    return [c for c in status.get("certificates", []) if c["name"] == secret]  # type: ignore[attr-defined, index]


def test_expiring_certificate_is_reported_in_status_annotation_and_event(
    cluster: Cluster, namespace: str
) -> None:
    cert, key = expiring_in(10, "myapp.test")
    cluster.create_tls_secret(namespace, "myapp-tls", cert, key, labels={"app": "myapp"})
    cluster.create_certcheck(namespace, "myapp", {"matchLabels": {"app": "myapp"}}, threshold=30)

    status = cluster.wait_status(namespace, "myapp", targetCertsCount=1)
    [entry] = cert_entries(status, "myapp-tls")
    expected_not_after = wait_for(
        lambda: cluster.annotations(namespace, "myapp-tls").get("certcheck.dev/not-after"),
        what="not-after annotation",
    )
    assert entry["state"] == "ExpiringSoon"
    assert entry["notAfter"] == expected_not_after
    assert entry["active"] is True and entry["daysRemaining"] == 9
    assert status["expiringSoonCount"] == 1 and status["observedGeneration"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"

    annotations = cluster.annotations(namespace, "myapp-tls")
    assert annotations["certcheck.dev/state"] == "ExpiringSoon"
    assert annotations["certcheck.dev/checked-by"] == "myapp"

    secret_events = wait_for(lambda: cluster.events(namespace, "Secret", "myapp-tls"), what="Secret Event")
    assert [(e.type, e.reason) for e in secret_events] == [("Warning", "ExpiringSoon")]
    certcheck_events = wait_for(
        lambda: cluster.events(namespace, "CertCheck", "myapp"), what="CertCheck Event"
    )
    assert [(e.type, e.reason) for e in certcheck_events] == [("Warning", "ExpiringSoon")]


def test_expired_certificate_gives_expired(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(-2, "old.test")
    cluster.create_tls_secret(namespace, "old-tls", cert, key, labels={"app": "old"})
    cluster.create_certcheck(namespace, "old", {"matchLabels": {"app": "old"}})
    wait_for(
        lambda: cluster.annotations(namespace, "old-tls").get("certcheck.dev/state") == "Expired",
        what="Expired annotation",
    )
    # The annotation may land first: the status follows (the recorder writes each as soon as it can).
    status = wait_for(
        lambda: (s := cluster.status(namespace, "old")) and cert_entries(s, "old-tls") and s,
        what="status entry",
    )
    assert cert_entries(status, "old-tls")[0]["state"] == "Expired"
    assert cert_entries(status, "old-tls")[0]["active"] is False
    events = wait_for(lambda: cluster.events(namespace, "Secret", "old-tls"), what="Expired Event")
    assert [(e.type, e.reason) for e in events] == [("Warning", "Expired")]


async def events_drained(url: str) -> bool:
    """The recorder has written every Event queued so far."""
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(KUBE_EVENTS.name, RECORDER_EVENTS_CONSUMER)
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


def test_healthy_certificate_gives_no_warning_and_unselected_secret_is_untouched(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    healthy, healthy_key = expiring_in(200, "fine.test")
    outsider, outsider_key = expiring_in(3, "outsider.test")
    cluster.create_tls_secret(namespace, "fine-tls", healthy, healthy_key, labels={"app": "fine"})
    created = cluster.create_tls_secret(
        namespace, "outsider-tls", outsider, outsider_key, labels={"app": "else"}
    )
    cluster.create_certcheck(namespace, "fine", {"matchLabels": {"app": "fine"}})
    wait_for(
        lambda: cluster.annotations(namespace, "fine-tls").get("certcheck.dev/state") == "Valid",
        what="Valid annotation",
    )
    status = cluster.wait_status(namespace, "fine", targetCertsCount=1)
    assert status["validCount"] == 1
    # The evaluator queues an evaluation's Events before its result: once the status is written and the
    # recorder has nothing left to write, any Event this evaluation called for would exist.
    wait_for(lambda: asyncio.run(events_drained(stack.nats.url)), what="every queued Event written")
    assert cluster.events(namespace) == []
    outsider_secret = cluster.core.read_namespaced_secret("outsider-tls", namespace)
    assert outsider_secret.metadata.annotations is None
    assert outsider_secret.metadata.resource_version == created.metadata.resource_version


def test_replacing_the_certificate_updates_status_and_annotation(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(5, "rotating.test")
    cluster.create_tls_secret(namespace, "rotating-tls", cert, key, labels={"app": "rot"})
    cluster.create_certcheck(namespace, "rot", {"matchLabels": {"app": "rot"}})
    wait_for(
        lambda: cluster.annotations(namespace, "rotating-tls").get("certcheck.dev/state") == "ExpiringSoon",
        what="ExpiringSoon",
    )

    renewed, renewed_key = expiring_in(90, "rotating.test")
    cluster.core.patch_namespaced_secret(
        "rotating-tls", namespace, {"data": tls_secret_data(renewed, renewed_key)}
    )

    annotations = wait_for(
        lambda: (
            (a := cluster.annotations(namespace, "rotating-tls")).get("certcheck.dev/state") == "Valid" and a
        ),
        what="Valid after renewal",
    )
    status = cluster.wait_status(namespace, "rot", validCount=1)
    [entry] = cert_entries(status, "rotating-tls")
    assert entry["notAfter"] == annotations["certcheck.dev/not-after"]
    assert entry["daysRemaining"] == 89


def test_secret_selected_by_match_expressions(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "web-tls", cert, key, labels={"tier": "web"})
    cluster.create_tls_secret(namespace, "db-tls", cert, key, labels={"tier": "db"})
    cluster.create_certcheck(
        namespace, "expr", {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}
    )
    status = wait_for(
        lambda: (s := cluster.status(namespace, "expr")).get("targetCertsCount") and s, what="status"
    )
    assert [c["name"] for c in status["certificates"]] == ["web-tls"]


def test_invalid_spec_is_rejected_by_the_api_server(cluster: Cluster, namespace: str) -> None:
    import pytest
    from kubernetes.client.exceptions import ApiException

    for spec_selector, threshold in (
        ({"matchLabels": {"a": "b"}}, -1),
        ({"matchExpressions": [{"key": "a", "operator": "Near"}]}, 30),
    ):
        with pytest.raises(ApiException) as raised:
            cluster.create_certcheck(namespace, "bad", spec_selector, threshold=threshold)
        assert raised.value.status == 422


def test_threshold_defaults_to_30_days(cluster: Cluster, namespace: str) -> None:
    created = cluster.create_certcheck(namespace, "defaulted", {"matchLabels": {"a": "b"}}, threshold=None)
    assert created["spec"]["threshold"] == 30


def test_no_private_key_byte_is_ever_published_on_the_bus(cluster: Cluster, namespace: str, bus_tap) -> None:  # type: ignore[no-untyped-def]
    cert, key = expiring_in(10, "secretive.test")
    cluster.create_tls_secret(namespace, "secretive-tls", cert, key, labels={"app": "secretive"})
    cluster.create_certcheck(namespace, "secretive", {"matchLabels": {"app": "secretive"}})
    wait_for(
        lambda: cluster.annotations(namespace, "secretive-tls").get("certcheck.dev/state"),
        what="the Secret to go through the whole pipeline",
    )
    der_body = b"".join(line for line in key.splitlines() if not line.startswith(b"-----"))
    forbidden = {
        "PEM": key,
        "base64 of the PEM": base64.b64encode(key),
        "DER body": der_body,
        "raw DER": base64.b64decode(der_body),
        "first key line": key.splitlines()[1],
    }
    assert bus_tap.messages, "the tap saw no traffic at all"
    fingerprint = hashlib.sha256(x509.load_pem_x509_certificate(cert).public_bytes(Encoding.DER)).hexdigest()
    seen_certificate = any(fingerprint.encode() in data for _, data, _ in bus_tap.messages)
    assert seen_certificate, "the certificate's facts should have crossed the bus"
    for subject, data, headers in bus_tap.messages:
        blob = data + repr(headers).encode()
        for what, needle in forbidden.items():
            assert needle not in blob, f"{what} of tls.key found in a message on {subject}"
    assert all(b"PRIVATE KEY" not in data for _, data, _ in bus_tap.messages)


def test_status_subresource_ignores_status_in_spec_writes(cluster: Cluster, namespace: str) -> None:
    cluster.create_certcheck(namespace, "sub", {"matchLabels": {"a": "b"}})
    wait_for(lambda: cluster.status(namespace, "sub").get("conditions"), what="status")
    body = cluster.certcheck(namespace, "sub")
    body["status"]["validCount"] = 999
    cluster.custom.replace_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "sub", body
    )
    assert cluster.status(namespace, "sub")["validCount"] == 0
