"""JKS and JCEKS keystores: their certificates read without the password, a known password checked,
and every malformed keystore reported with a reason."""

from __future__ import annotations

import functools
import struct

import pytest

from devcluster.certs import expiring_in
from services.domain.certs import CertError, CertFacts
from services.domain.decode import find_certificates
from services.domain.jks import KeystoreError, read_java_keystore
from services.domain.pem import parse_pem_certificate
from tests.keystores import java_keystore, needs_keytool

pytestmark = needs_keytool
PASSWORD = "changeit"


@functools.cache
def ca_pem() -> bytes:
    return expiring_in(400, "keystore CA")[0]


@functools.cache
def store(store_type: str) -> bytes:
    return java_keystore(store_type, PASSWORD, key_pair="app.test", trusted={"ca": ca_pem()})


def subjects(found: tuple[str, ...]) -> list[str | None]:
    parsed = [parse_pem_certificate(block) for block in found]
    assert all(isinstance(p, CertFacts) for p in parsed), parsed
    return sorted(p.subject_cn or "" for p in parsed if isinstance(p, CertFacts))


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_the_key_entrys_chain_and_trusted_certificates_are_read_without_the_password(store_type: str) -> None:
    found = find_certificates("truststore.jks", store(store_type), {})
    assert found.error is None
    assert subjects(found.pem) == ["app.test", "keystore CA"]


@pytest.mark.parametrize("store_type", ["JKS", "JCEKS"])
def test_a_known_password_is_checked_and_a_wrong_one_reported(store_type: str) -> None:
    value = store(store_type)
    keystore = read_java_keystore(value)
    assert keystore.kind == store_type
    assert keystore.password_matches(PASSWORD.encode()) and not keystore.password_matches(b"wrong")
    right = find_certificates("keystore.jks", value, {"keystore.jks.password": PASSWORD.encode()})
    assert right.error is None and len(right.pem) == 2
    wrong = find_certificates("keystore.jks", value, {"password": b"hunter2"})
    assert wrong.pem == ()
    assert wrong.error == (
        f"{store_type} keystore: wrong password, or altered since it was written "
        "(its integrity check fails with every password found)"
    )


def test_a_keystore_altered_after_it_was_written_fails_its_integrity_check() -> None:
    value = bytearray(store("JKS"))
    value[-30] ^= 0x01  # inside the last certificate, before the digest
    found = find_certificates("keystore.jks", bytes(value), {"password": PASSWORD.encode()})
    assert found.error is not None and "integrity check fails" in found.error


def test_a_key_name_is_not_needed_the_magic_number_says_what_it_is() -> None:
    found = find_certificates("bundle", store("JKS"), {})
    assert len(found.pem) == 2


def test_a_jceks_secret_key_entry_is_reported_not_guessed_at() -> None:
    value = java_keystore("JCEKS", PASSWORD, secret_key="aes")
    found = find_certificates("keystore.jceks", value, {})
    assert found.error == "JCEKS keystore holds a secret-key entry, which certcheck cannot read past"


def _header(count: int, magic: int = 0xFEEDFEED, version: int = 2) -> bytes:
    return struct.pack(">III", magic, version, count)


def _trusted(der: bytes, alias: bytes = b"a", kind: bytes = b"X.509") -> bytes:
    return (
        struct.pack(">I", 2)
        + struct.pack(">H", len(alias))
        + alias
        + bytes(8)
        + struct.pack(">H", len(kind))
        + kind
        + struct.pack(">I", len(der))
        + der
    )


HOSTILE = {
    "empty after the magic": (struct.pack(">I", 0xFEEDFEED), "truncated Java keystore"),
    "unknown version": (_header(0, version=9) + bytes(20), "JKS keystore of unknown version 9"),
    "a billion entries claimed": (_header(10**9), "JKS keystore claims 1000000000 entries"),
    "truncated in an entry": (_header(1) + _trusted(b"\x30\x03\x02\x01\x01")[:-3], "truncated Java keystore"),
    "certificate length beyond the end": (
        _header(1)
        + struct.pack(">IH", 2, 1)
        + b"a"
        + bytes(8)
        + struct.pack(">H", 5)
        + b"X.509"
        + b"\xff" * 4,
        "truncated Java keystore",
    ),
    "an entry of unknown type": (
        _header(1) + struct.pack(">I", 7),
        "JKS keystore holds an entry of unknown type 7",
    ),
    "a certificate that is not X.509": (_header(1) + _trusted(b"x", kind=b"PGP") + bytes(20), "not X.509"),
    "bytes after the digest": (_header(0) + bytes(25), "JKS keystore has 5 bytes after its digest"),
    "no digest": (_header(0), "truncated Java keystore"),
    "no entries": (_header(0) + bytes(20), "JKS keystore holds no certificate"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_malformed_java_keystore_is_reported_with_its_reason(case: str) -> None:
    value, reason = HOSTILE[case]
    found = find_certificates("store.jks", value, {})
    assert found.pem == () and found.error is not None and reason in found.error


def test_a_garbage_certificate_inside_a_keystore_becomes_an_invalid_entry() -> None:
    found = find_certificates("store.jks", _header(1) + _trusted(b"\x30\x03\x02\x01\x01") + bytes(20), {})
    [block] = found.pem
    assert isinstance(parse_pem_certificate(block), CertError)


def test_a_jks_named_key_holding_something_else_says_so() -> None:
    found = find_certificates("store.jks", b"PK\x03\x04 not a keystore", {})
    assert found.error == "not a Java keystore (JKS or JCEKS)"
    with pytest.raises(KeystoreError):
        read_java_keystore(b"\x00\x00\x00\x00" + bytes(30))
