"""Kubeconfigs in Secrets: each client certificate and CA certificate read and named by its user,
cluster and contexts; the keys never; every malformed kubeconfig reported with a reason."""

from __future__ import annotations

import base64

import msgspec
import pytest
import yaml

from devcluster.certs import expiring_in
from services.domain.decode import find_certificates
from services.watcher.extract import RawSecret, secret_observed
from tests import kubeconfigs


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def kubeconfig() -> bytes:
    admin, admin_key = expiring_in(20, "kubernetes-admin")
    ca, _ = expiring_in(3000, "kubernetes")
    config = kubeconfigs.kubeconfig(
        {"prod": ca},
        {
            "admin": kubeconfigs.client_certificate(admin, admin_key),
            "robot": {"token": "s3cr3t-token"},
            "files": {"client-certificate": "/etc/kubernetes/pki/admin.crt"},
        },
        {"admin@prod": ("prod", "admin"), "robot@prod": ("prod", "robot")},
    )
    return yaml.safe_dump(config).encode()


def test_client_and_ca_certificates_are_named_by_user_cluster_and_context() -> None:
    found = find_certificates("value", kubeconfig(), {})
    assert found.error is None
    assert found.origins == (
        "user admin (context admin@prod)",
        "cluster prod CA (contexts admin@prod and 1 more)",
    )
    assert len(found.pem) == 2


def test_a_cluster_api_kubeconfig_secret_publishes_facts_and_no_key_or_token() -> None:
    secret = msgspec.convert(
        {
            "metadata": {"name": "prod-kubeconfig", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
            "type": "cluster.x-k8s.io/secret",
            "data": {"value": b64(kubeconfig())},
        },
        RawSecret,
    )
    observed = secret_observed(secret)
    [source] = observed.sources
    assert [(c.subject_cn, c.origin) for c in source.certs] == [
        ("kubernetes-admin", "user admin (context admin@prod)"),
        ("kubernetes", "cluster prod CA (contexts admin@prod and 1 more)"),
    ]
    wire = msgspec.json.encode(observed)
    assert b"s3cr3t-token" not in wire and b"PRIVATE KEY" not in wire and b"client-key-data" not in wire


MALFORMED = {
    "not YAML": (b"client-certificate-data: [unclosed", "not a readable kubeconfig: "),
    "a list, not a mapping": (b"- client-certificate-data\n", "not a kubeconfig: not a mapping"),
    "data not base64 PEM": (
        b"users: [{name: u, user: {client-certificate-data: '!!!'}}]",
        "user u: the certificate data holds no PEM certificate",
    ),
    "data not a string": (
        b"users: [{name: u, user: {client-certificate-data: [1, 2]}}]",
        "user u: the certificate data is not a string",
    ),
    "data holds no certificate": (
        b"clusters: [{name: c, cluster: {certificate-authority-data: " + base64.b64encode(b"hello") + b"}}]",
        "cluster c CA: the certificate data holds no PEM certificate",
    ),
    "only file paths": (
        b"users: [{name: u, user: {client-certificate: /x.crt}}]\n# client-certificate-data",
        "a kubeconfig that embeds no certificate",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_kubeconfig_is_reported_with_its_reason(case: str) -> None:
    value, reason = MALFORMED[case]
    found = find_certificates("value", value, {})
    assert found.pem == () and found.error is not None and reason in found.error, found.error


def test_an_alias_bomb_is_read_without_expanding_it() -> None:
    lines = [b'a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(20):
        this, before = chr(98 + i), chr(97 + i)
        lines.append(f"{this}: &{this} [*{before},*{before},*{before},*{before}]".encode())
    bomb = b"\n".join(lines) + b"\n"
    found = find_certificates("value", bomb + b"users: []\n# client-certificate-data\n", {})
    assert found.error is not None and "embeds no certificate" in found.error
