"""The watcher's extraction: only certificate blocks leave, everything else is dropped or reported."""

from __future__ import annotations

import base64
import hashlib

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devcluster.certs import expiring_in
from services.watcher.extract import (
    ObjectMeta,
    RawConfigMap,
    RawSecret,
    configmap_observed,
    digest,
    read_cert_source,
    secret_observed,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_secret(data: dict[str, str], annotations: dict[str, str] | None = None) -> RawSecret:
    meta = ObjectMeta(
        name="web",
        uid="u1",
        resourceVersion="7",
        namespace="ns",
        labels={"app": "web"},
        annotations=annotations,
    )
    return RawSecret(metadata=meta, type="kubernetes.io/tls", data=data)


def fingerprint(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def test_only_certificate_facts_are_kept_even_when_a_key_is_bundled_in_tls_crt() -> None:
    cert, key = expiring_in(10)
    observed = secret_observed(raw_secret({"tls.crt": b64(key + cert), "tls.key": b64(key)}))
    [source] = observed.sources
    assert source.key == "tls.crt" and len(source.certs) == 1
    assert source.certs[0].fingerprint == fingerprint(cert)
    assert source.certs[0].not_after == x509.load_pem_x509_certificate(cert).not_valid_after_utc
    message = msgspec.json.encode(observed)
    assert b"PRIVATE KEY" not in message and b64(key).encode()[:40] not in message


def test_chain_keeps_every_certificate_in_order() -> None:
    leaf, _ = expiring_in(10, "leaf")
    intermediate, _ = expiring_in(100, "intermediate")
    source = read_cert_source("tls.crt", b64(leaf + intermediate))
    assert [c.fingerprint for c in source.certs] == [fingerprint(leaf), fingerprint(intermediate)]
    assert [c.subject_cn for c in source.certs] == ["leaf", "intermediate"]


def test_ca_crt_is_read_when_present() -> None:
    cert, key = expiring_in(10)
    ca, _ = expiring_in(1000, "ca")
    observed = secret_observed(raw_secret({"tls.crt": b64(cert), "tls.key": b64(key), "ca.crt": b64(ca)}))
    assert [s.key for s in observed.sources] == ["tls.crt", "ca.crt"]


def test_missing_empty_and_garbage_values_are_reported_not_raised() -> None:
    assert read_cert_source("tls.crt", None).error == "key tls.crt is missing"
    assert read_cert_source("tls.crt", "").error == "key tls.crt is empty"
    assert read_cert_source("tls.crt", "%%%").error == "key tls.crt is not valid base64"
    assert (
        read_cert_source("tls.crt", b64(b"hello")).error
        == "no certificate in key tls.crt (not PEM, DER or PKCS#12)"
    )


def test_oversized_value_is_reported() -> None:
    error = read_cert_source("tls.crt", "A" * (3 << 20)).error
    assert error is not None and "too large" in error


def test_only_certcheck_annotations_are_observed() -> None:
    cert, _ = expiring_in(10)
    observed = secret_observed(
        raw_secret(
            {"tls.crt": b64(cert)},
            annotations={
                "certcheck.dev/state": "Valid",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        )
    )
    assert observed.annotations == {"certcheck.dev/state": "Valid"}


def test_digest_ignores_resource_version_but_not_content() -> None:
    cert, _ = expiring_in(10)
    other, _ = expiring_in(20)
    first = secret_observed(raw_secret({"tls.crt": b64(cert)}))
    bumped = secret_observed(
        RawSecret(
            metadata=ObjectMeta(
                name="web", uid="u1", resourceVersion="8", namespace="ns", labels={"app": "web"}
            ),
            type="kubernetes.io/tls",
            data={"tls.crt": b64(cert)},
        )
    )
    changed = secret_observed(raw_secret({"tls.crt": b64(other)}))
    assert digest(first) == digest(bumped)
    assert digest(first) != digest(changed)


def raw_configmap(data: dict[str, str] | None = None, binary: dict[str, str] | None = None) -> RawConfigMap:
    meta = ObjectMeta(name="trust", uid="cm1", resourceVersion="3", namespace="ns", labels={"b": "1"})
    return RawConfigMap(metadata=meta, data=data, binaryData=binary)


def test_configmap_text_bundle_and_binary_der_are_both_read() -> None:
    first, _ = expiring_in(10)
    second, _ = expiring_in(20)
    der = x509.load_pem_x509_certificate(second).public_bytes(Encoding.DER)
    observed = configmap_observed(
        raw_configmap(
            data={"ca-bundle.crt": (first + second).decode(), "settings.yaml": "a: 1"},
            binary={"root.der": b64(der)},
        )
    )
    by_key = {source.key: source for source in observed.sources}
    assert len(by_key["ca-bundle.crt"].certs) == 2
    assert [c.fingerprint for c in by_key["root.der"].certs] == [fingerprint(second)]
    assert observed.other_keys == ["settings.yaml"]


def test_configmap_key_named_as_a_certificate_but_holding_none_is_reported() -> None:
    observed = configmap_observed(raw_configmap(data={"ca.crt": "-----BEGIN CERTIFICATE-----\nAAAA"}))
    [source] = observed.sources
    assert source.error == "key ca.crt holds a truncated or corrupt PEM certificate"


def test_a_secret_gaining_a_key_without_a_certificate_is_published_again() -> None:
    # A CertCheck whose spec.keys names that key says "key missing" until it learns the key exists.
    cert, _ = expiring_in(10)
    before = secret_observed(raw_secret({"tls.crt": b64(cert)}))
    after = secret_observed(raw_secret({"tls.crt": b64(cert), "config.yaml": b64(b"a: 1")}))
    assert after.other_keys == ["config.yaml"]
    assert digest(before) != digest(after)


def test_every_field_of_a_message_but_the_resource_version_counts_in_its_digest() -> None:
    cert, _ = expiring_in(10)
    base = secret_observed(raw_secret({"tls.crt": b64(cert)}))
    ignored = {"resource_version"}
    for name in base.__struct_fields__:
        if name in ignored:
            continue
        value = getattr(base, name)
        changed = ["x"] if isinstance(value, list) else {"x": "y"} if isinstance(value, dict) else "other"
        assert digest(msgspec.structs.replace(base, **{name: changed})) != digest(base), name


def test_configmap_digest_follows_its_certificates_not_its_resource_version() -> None:
    cert, _ = expiring_in(10)
    other, _ = expiring_in(11)
    base = configmap_observed(raw_configmap(data={"ca.crt": cert.decode()}))
    again = msgspec.structs.replace(base, resource_version="99")
    changed = configmap_observed(raw_configmap(data={"ca.crt": other.decode()}))
    assert digest(base) == digest(again) != digest(changed)


def test_a_secret_of_several_mib_reports_its_big_values_and_still_reads_the_certificate() -> None:
    # The API server caps a Secret near 1 MiB; the watcher must not depend on that cap.
    cert, key = expiring_in(10)
    huge = b"-----BEGIN CERTIFICATE-----\n" + b"A" * (1 << 20) + b"\n-----END CERTIFICATE-----\n"
    data = {f"big{i}.pem": b64(huge) for i in range(4)} | {"tls.crt": b64(cert), "tls.key": b64(key)}
    observed = secret_observed(raw_secret(data))
    by_key = {source.key: source for source in observed.sources}
    assert len(by_key["tls.crt"].certs) == 1
    assert all("too large" in (by_key[f"big{i}.pem"].error or "") for i in range(4))


def test_certchecks_annotations_set_last_by_someone_else_are_reported_as_edited() -> None:
    import msgspec

    from services.watcher.extract import RawSecret, secret_observed

    def fields(*keys: str) -> dict[str, object]:
        return {"f:metadata": {"f:annotations": {f"f:{k}": {} for k in keys}}}

    raw = msgspec.json.decode(
        msgspec.json.encode(
            {
                "metadata": {
                    "name": "s",
                    "uid": "u",
                    "resourceVersion": "9",
                    "namespace": "ns",
                    "annotations": {
                        "certcheck.dev/state": "Valid",
                        "certcheck.dev/not-after": "x",
                        "team": "a",
                    },
                    "managedFields": [
                        {
                            "manager": "certcheck",
                            "fieldsV1": fields("certcheck.dev/not-after", "certcheck.dev/state"),
                        },
                        {"manager": "kubectl-edit", "fieldsV1": fields("certcheck.dev/state", "team")},
                        {"manager": "python-urllib3", "fieldsV1": fields("certcheck.dev/not-after")},
                        {"manager": "odd", "fieldsV1": "not an object"},
                    ],
                },
                "type": "kubernetes.io/tls",
            }
        ),
        type=RawSecret,
    )
    assert secret_observed(raw).edited_annotations == ["certcheck.dev/state"]


def test_a_secret_with_more_keys_than_certcheck_scans_says_so_and_keeps_the_first_ones() -> None:
    import base64

    import msgspec

    from services.watcher.extract import MAX_KEYS_SCANNED, RawSecret, secret_observed

    junk = base64.b64encode(b"not a certificate").decode()
    data = {f"k{i:05d}.pem": junk for i in range(MAX_KEYS_SCANNED + 10)}
    raw = msgspec.convert(
        {"metadata": {"name": "s", "uid": "u", "resourceVersion": "1", "namespace": "ns"}, "data": data},
        RawSecret,
    )
    sources = secret_observed(raw).sources
    limit = [s for s in sources if s.error and f"more than {MAX_KEYS_SCANNED} keys" in s.error]
    assert len(limit) == 1
    assert sum(1 for s in sources if s.key.endswith(".pem")) >= MAX_KEYS_SCANNED


def test_a_value_over_the_size_limit_is_reported_not_read() -> None:
    from services.domain.decode import MAX_VALUE_BYTES, find_certificates

    found = find_certificates("tls.crt", b"x" * (MAX_VALUE_BYTES + 1), {})
    assert found.pem == () and found.error and "too large" in found.error
