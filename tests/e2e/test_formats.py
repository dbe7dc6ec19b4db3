"""Certificates in every layout, end to end, and inputs that must not stop anything else."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from kubernetes import client

from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import Stack
from schemas.annotations import CREDENTIAL_LABEL
from tests.conftest import Cluster, wait_for
from tests.e2e.helpers import metric
from tests.keystores import java_keystore, needs_keytool
from tests.kubeconfigs import client_certificate, kubeconfig


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def opaque(
    cluster: Cluster, namespace: str, name: str, data: dict[str, bytes], labels: dict[str, str]
) -> None:
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            type="Opaque",
            data={k: b64(v) for k, v in data.items()},
        ),
    )


def entries(cluster: Cluster, namespace: str, certcheck: str, count: int) -> list[dict[str, Any]]:
    status = wait_for(
        lambda: (s := cluster.status(namespace, certcheck)).get("targetCertsCount") == count and s,
        timeout=20,
        what=f"{count} certificates in {certcheck}",
    )
    return sorted(status["certificates"], key=lambda c: (c["name"], c["key"], c["index"]))


def test_tls_chain_and_ca_each_give_an_entry_with_key_and_position(cluster: Cluster, namespace: str) -> None:
    leaf, key = expiring_in(20, "leaf.test")
    intermediate, _ = expiring_in(200, "intermediate.test")
    ca, _ = expiring_in(2000, "root.test")
    data = tls_secret_data(leaf + intermediate, key)
    data["ca.crt"] = b64(ca)
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="chain", labels={"app": "chain"}),
            type="kubernetes.io/tls",
            data=data,
        ),
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "chain"}})
    found = entries(cluster, namespace, "c", 3)
    assert [(e["key"], e["index"], e["subject"]) for e in found] == [
        ("ca.crt", 0, "root.test"),
        ("tls.crt", 0, "leaf.test"),
        ("tls.crt", 1, "intermediate.test"),
    ]


def test_opaque_secret_read_by_key_patterns(cluster: Cluster, namespace: str) -> None:
    app, app_key = expiring_in(10, "app.test")
    bundle_a, _ = expiring_in(100, "bundle-a.test")
    bundle_b, _ = expiring_in(300, "bundle-b.test")
    opaque(
        cluster,
        namespace,
        "mixed",
        {
            "app.pem": app,
            "trust-bundle.pem": bundle_a + bundle_b,
            "app.key": app_key,
            "config.yaml": b"a: 1",
        },
        {"app": "opaque"},
    )
    cluster.create_certcheck(namespace, "pems", {"matchLabels": {"app": "opaque"}}, threshold=30)
    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "pems", {"spec": {"keys": ["trust-*.pem"]}}
    )
    found = entries(cluster, namespace, "pems", 2)
    assert [(e["key"], e["subject"]) for e in found] == [
        ("trust-bundle.pem", "bundle-a.test"),
        ("trust-bundle.pem", "bundle-b.test"),
    ]

    cluster.create_certcheck(namespace, "all", {"matchLabels": {"app": "opaque"}})
    found = entries(
        cluster, namespace, "all", 3
    )  # the default for non-TLS Secrets: every key with a certificate
    assert {e["key"] for e in found} == {"app.pem", "trust-bundle.pem"}

    cluster.create_certcheck(namespace, "named", {"matchLabels": {"app": "opaque"}})
    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "named", {"spec": {"keys": ["config.yaml"]}}
    )
    [invalid] = entries(cluster, namespace, "named", 1)
    assert (invalid["state"], invalid["reason"]) == ("Invalid", "no certificate in key config.yaml")


def test_pkcs12_keystore_with_its_password_in_the_same_secret(cluster: Cluster, namespace: str) -> None:
    cert_pem, key_pem = expiring_in(15, "keystore.test")
    key = serialization.load_pem_private_key(key_pem, None)
    store = pkcs12.serialize_key_and_certificates(
        b"app",
        key,
        x509.load_pem_x509_certificate(cert_pem),
        None,  # type: ignore[arg-type]
        serialization.BestAvailableEncryption(b"changeit"),
    )
    opaque(
        cluster, namespace, "store", {"keystore.p12": store, "keystore-password": b"changeit"}, {"app": "p12"}
    )
    opaque(
        cluster, namespace, "locked", {"keystore.p12": store, "keystore-password": b"nope"}, {"app": "p12"}
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "p12"}})
    locked, opened = entries(cluster, namespace, "c", 2)
    assert (opened["name"], opened["subject"], opened["state"]) == ("store", "keystore.test", "ExpiringSoon")
    assert locked["state"] == "Invalid" and "wrong or missing password" in locked["reason"]


@needs_keytool
def test_java_keystores_are_read_without_a_password_and_a_wrong_one_is_reported(
    cluster: Cluster, namespace: str
) -> None:
    ca, _ = expiring_in(10, "truststore CA")
    jks = java_keystore("JKS", "changeit", key_pair="jks.test", trusted={"ca": ca}, validity_days=400)
    jceks = java_keystore("JCEKS", "changeit", trusted={"ca": ca})
    opaque(cluster, namespace, "jks", {"truststore.jks": jks}, {"app": "jks"})
    opaque(cluster, namespace, "checked", {"store.jceks": jceks, "password": b"changeit"}, {"app": "jks"})
    opaque(cluster, namespace, "wrong", {"keystore.jks": jks, "keystore-password": b"nope"}, {"app": "jks"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "jks"}})
    found = entries(cluster, namespace, "c", 4)
    # A keystore's entries come in the order keytool wrote them (its own hash order): compared sorted.
    assert sorted((e["name"], e["key"], e.get("subject") or "", e["state"]) for e in found) == [
        ("checked", "store.jceks", "truststore CA", "ExpiringSoon"),
        ("jks", "truststore.jks", "jks.test", "Valid"),
        ("jks", "truststore.jks", "truststore CA", "ExpiringSoon"),
        ("wrong", "keystore.jks", "", "Invalid"),
    ]
    assert "JKS keystore: wrong password" in found[3]["reason"]


def test_a_kubeconfig_secret_reports_its_client_and_ca_certificates_by_origin(
    cluster: Cluster, namespace: str
) -> None:
    client_cert, client_key = expiring_in(5, "kubernetes-admin")
    ca, _ = expiring_in(3000, "kubernetes")
    config = kubeconfig(
        {"prod": ca},
        {"admin": client_certificate(client_cert, client_key)},
        {"admin@prod": ("prod", "admin")},
    )
    opaque(cluster, namespace, "prod-kubeconfig", {"value": json.dumps(config).encode()}, {"app": "capi"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "capi"}})
    found = entries(cluster, namespace, "c", 2)
    assert [(e["key"], e["index"], e["subject"], e["state"], e["origin"]) for e in found] == [
        ("value", 0, "kubernetes-admin", "ExpiringSoon", "user admin (context admin@prod)"),
        ("value", 1, "kubernetes", "Valid", "cluster prod CA (context admin@prod)"),
    ]


def test_pkcs12_password_from_a_referenced_secret_follows_that_secret(
    cluster: Cluster, namespace: str
) -> None:
    cert_pem, key_pem = expiring_in(15, "referenced.test")
    store = pkcs12.serialize_key_and_certificates(
        b"app",
        serialization.load_pem_private_key(key_pem, None),  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(cert_pem),
        None,
        serialization.BestAvailableEncryption(b"from-elsewhere"),
    )
    opaque(cluster, namespace, "store-password", {"store-pass": b"from-elsewhere"}, {})
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(
                name="store",
                labels={"app": "ref"},
                annotations={
                    "keystore.certcheck.dev/password-secret": "store-password",
                    "keystore.certcheck.dev/password-key": "store-pass",
                },
            ),
            type="Opaque",
            data={"app.pfx": b64(store)},
        ),
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "ref"}})
    # The password Secret has not opted in: annotating a keystore must not make certcheck read it.
    [refused] = entries(cluster, namespace, "c", 1)
    assert refused["state"] == "Invalid"
    assert refused["reason"].endswith("is not labelled certcheck.dev/credential=true")

    # Labelling it is the opt-in, and re-reads the keystore that points at it.
    cluster.core.patch_namespaced_secret(
        "store-password", namespace, {"metadata": {"labels": {CREDENTIAL_LABEL: "true"}}}
    )
    opened = wait_for(
        lambda: (e := cluster.status(namespace, "c")["certificates"][0])["state"] == "ExpiringSoon" and e,
        what="the keystore opened once its password Secret opted in",
    )
    assert opened["subject"] == "referenced.test"

    # Changing only the password Secret re-reads the keystore that points at it.
    cluster.core.patch_namespaced_secret("store-password", namespace, {"data": {"store-pass": b64(b"wrong")}})
    locked = wait_for(
        lambda: (s := cluster.status(namespace, "c")).get("invalidCount") == 1 and s["certificates"][0],
        what="the keystore Invalid once its password Secret changed",
    )
    assert "wrong or missing password" in locked["reason"]
    cluster.core.delete_namespaced_secret("store-password", namespace)
    gone = wait_for(
        lambda: (
            "does not exist" in (cluster.status(namespace, "c")["certificates"][0].get("reason") or "")
            and cluster.status(namespace, "c")["certificates"][0]
        ),
        what="the missing password Secret named in the reason",
    )
    assert gone["reason"].endswith("password Secret store-password key store-pass does not exist")


def test_a_near_limit_value_and_a_thousand_keys_do_not_stop_the_other_secrets(
    cluster: Cluster, namespace: str
) -> None:
    fine, fine_key = expiring_in(50, "fine.test")
    opaque(cluster, namespace, "huge", {"blob.pem": b"x" * 1_000_000}, {"app": "big"})
    opaque(
        cluster,
        namespace,
        "many",
        {f"k{i:04d}.pem": b"not a certificate" for i in range(1000)},
        {"app": "big"},
    )
    cluster.create_tls_secret(namespace, "fine", fine, fine_key, labels={"app": "big"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "big"}})
    status = wait_for(
        lambda: (
            (s := cluster.status(namespace, "c")).get("targetSecretsCount") == 3
            and s.get("validCount") == 1
            and s
        ),
        timeout=30,
        what="the healthy certificate evaluated",
    )
    assert status["invalidCount"] == 1001  # one entry per unreadable key
    reasons = {c["name"]: c.get("reason") for c in status["certificates"] if c["state"] == "Invalid"}
    assert reasons["huge"] == "no certificate in key blob.pem (not PEM, DER or PKCS#12)"


def test_configmap_trust_bundles_are_read_and_reported_but_never_written(
    stack: Stack, cluster: Cluster, namespace: str
) -> None:
    soon, _ = expiring_in(5, "soon-root.test")
    later, _ = expiring_in(900, "later-root.test")
    der = x509.load_pem_x509_certificate(later).public_bytes(serialization.Encoding.DER)
    labels = {"trust": "bundle"}
    cluster.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="trust", labels=labels),
            data={"ca-bundle.crt": (soon + later).decode(), "README": "not a certificate"},
            binary_data={"root.der": b64(der)},
        ),
    )
    cluster.create_tls_secret(namespace, "trust", later, expiring_in(1)[1], labels=labels)
    cluster.create_certcheck(namespace, "bundles", None, configMapSelector={"matchLabels": labels})
    found = entries(cluster, namespace, "bundles", 3)  # the Secret of the same name is not selected
    assert {e.get("kind") for e in found} == {"ConfigMap"}
    assert [(e["key"], e["index"], e["state"]) for e in found] == [
        ("ca-bundle.crt", 0, "ExpiringSoon"),
        ("ca-bundle.crt", 1, "Valid"),
        ("root.der", 0, "Valid"),
    ]
    assert cluster.status(namespace, "bundles")["earliestCertificate"] == "ConfigMap/trust/ca-bundle.crt[0]"
    wait_for(
        lambda: (
            metric(
                stack,
                "exporter",
                "certcheck_certificate_expiring",
                f'configmap_namespace="{namespace}",configmap_name="trust",configmap_key="ca-bundle.crt"',
            )
            == 1
        ),
        what="the ConfigMap's certificate in the metrics",
    )

    cluster.core.patch_namespaced_config_map("trust", namespace, {"data": {"ca-bundle.crt": later.decode()}})
    assert [e["state"] for e in entries(cluster, namespace, "bundles", 2)] == ["Valid", "Valid"]
    configmap = cluster.core.read_namespaced_config_map("trust", namespace)
    assert not any(k.startswith("certcheck.dev/") for k in configmap.metadata.annotations or {})

    cluster.core.delete_namespaced_config_map("trust", namespace)
    entries(cluster, namespace, "bundles", 0)
