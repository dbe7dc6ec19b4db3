"""Every layout users keep certificates in, and no input that can break the parser."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import given, settings
from hypothesis import strategies as st

from devcluster.certs import expiring_in
from services.domain.certs import CertError
from services.domain.decode import MAX_VALUE_BYTES, find_certificates
from services.domain.pem import parse_pem_certificate

CERT, KEY = expiring_in(30, "layout.test")
CA, _ = expiring_in(900, "ca.test")


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def keystore(password: bytes | None) -> bytes:
    key = serialization.load_pem_private_key(KEY, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(
        b"alias", key, x509.load_pem_x509_certificate(CERT), [x509.load_pem_x509_certificate(CA)], encryption
    )


def subjects(found_pem: tuple[str, ...]) -> list[str | None]:
    return [getattr(parse_pem_certificate(p), "subject_cn", None) for p in found_pem]


def test_pem_bundle_with_other_blocks_keeps_only_certificates_in_order() -> None:
    found = find_certificates("bundle.pem", KEY + CERT + b"junk\n" + CA, {})
    assert subjects(found.pem) == ["layout.test", "ca.test"]
    assert all("PRIVATE" not in p for p in found.pem)


def test_der_certificate() -> None:
    assert subjects(find_certificates("cert.der", der(CERT), {}).pem) == ["layout.test"]


def test_base64_applied_twice_is_detected() -> None:
    assert subjects(find_certificates("tls.crt", base64.b64encode(CERT), {}).pem) == ["layout.test"]
    assert subjects(find_certificates("tls.crt", base64.b64encode(der(CERT)), {}).pem) == ["layout.test"]


def test_pkcs12_with_the_password_in_a_sibling_key() -> None:
    found = find_certificates("keystore.p12", keystore(b"s3cret"), {"keystore.p12.password": b"s3cret\n"})
    assert subjects(found.pem) == ["layout.test", "ca.test"]


def test_pkcs12_without_password_is_opened_with_the_empty_one() -> None:
    assert subjects(find_certificates("store.pfx", keystore(None), {}).pem) == ["layout.test", "ca.test"]


def test_pkcs12_with_a_wrong_password_is_reported() -> None:
    found = find_certificates("keystore.p12", keystore(b"right"), {"password": b"wrong"})
    assert found.pem == () and found.error is not None and "wrong or missing password" in found.error


def test_bad_inputs_are_reported_precisely() -> None:
    truncated = CERT[: len(CERT) // 2]
    assert (
        find_certificates("tls.crt", truncated, {}).error
        == "key tls.crt holds a truncated or corrupt PEM certificate"
    )
    assert (
        find_certificates("tls.crt", KEY, {}).error
        == "no certificate in key tls.crt (not PEM, DER or PKCS#12)"
    )
    assert find_certificates("tls.crt", b"   ", {}).error == "key tls.crt is empty"
    huge = find_certificates("tls.crt", b"A" * (MAX_VALUE_BYTES + 1), {}).error
    assert huge is not None and "too large" in huge


def test_malformed_certificate_inside_a_valid_pem_block_is_invalid_not_an_exception() -> None:
    body = base64.b64encode(der(CERT)[:-40]).decode()
    pem = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    assert isinstance(parse_pem_certificate(pem), CertError)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=4096),
        st.binary(max_size=512).map(lambda b: CERT[:200] + b + CERT[200:]),
        st.integers(0, len(CERT)).flatmap(
            lambda i: st.binary(max_size=8).map(lambda b: CERT[:i] + b + CERT[i:])
        ),
        st.integers(0, len(der(CERT)) - 1).map(lambda i: der(CERT)[:i] + b"\xff" + der(CERT)[i + 1 :]),
    )
)
def test_arbitrary_and_mutated_bytes_always_give_certificates_or_a_reason_quickly(value: bytes) -> None:
    started = time.perf_counter()
    found = find_certificates("tls.crt", value, {})
    assert bool(found.pem) != bool(found.error)
    for pem in found.pem:
        parsed = parse_pem_certificate(pem)
        assert parsed is not None  # facts or an Invalid reason, never an exception
    assert time.perf_counter() - started < 1.0


def test_expired_dates_round_trip() -> None:
    old, _ = expiring_in(-3)
    facts = parse_pem_certificate(find_certificates("tls.crt", old, {}).pem[0])
    assert not isinstance(facts, CertError) and facts.not_after < datetime.now(UTC) - timedelta(days=2)


def test_a_negative_serial_number_is_invalid_with_the_reason_and_still_says_when_it_expires() -> None:
    cert, _ = expiring_in(30)
    number = x509.load_pem_x509_certificate(cert).serial_number
    serial = number.to_bytes(number.bit_length() // 8 + 1, "big")  # as DER has it: a leading 0 when needed
    encoded_serial = bytes([0x02, len(serial)]) + serial
    # 0x80 first: negative, and minimally encoded whatever follows (0xFF before a byte with its high bit
    # set is not, and cryptography refuses to parse that at all: the random serial made this flaky).
    negative = bytes([0x02, len(serial), 0x80]) + serial[1:]
    parsed = parse_pem_certificate(_patched_der_of(cert, encoded_serial, negative))
    assert isinstance(parsed, CertError)
    assert parsed.reason.startswith("serial number is not positive, which RFC 5280 forbids (notAfter ")


def test_a_certificate_valid_before_it_starts_is_invalid() -> None:
    cert, _ = expiring_in(30)
    validity = x509.load_pem_x509_certificate(cert)
    before = validity.not_valid_before_utc.strftime("%y%m%d%H%M%SZ").encode()
    after = validity.not_valid_after_utc.strftime("%y%m%d%H%M%SZ").encode()
    swapped = _patched_der_of(
        cert, b"\x17\x0d" + before + b"\x17\x0d" + after, b"\x17\x0d" + after + b"\x17\x0d" + before
    )
    parsed = parse_pem_certificate(swapped)
    assert isinstance(parsed, CertError) and "is after notAfter" in parsed.reason


def _patched_der_of(cert: bytes, old: bytes, new: bytes) -> str:
    body = der(cert)
    assert body.count(old) == 1
    encoded = base64.b64encode(body.replace(old, new)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{encoded}\n-----END CERTIFICATE-----\n"
