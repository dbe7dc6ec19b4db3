"""Hostile certificates: DER built by hand, so that every field can hold what no well-behaved CA writes.

``cryptography``'s builder refuses most of these (dates before 1950, bad versions, broken extensions),
so a tiny DER encoder assembles the TBSCertificate directly. The signature is never valid: certcheck
reads certificates, it does not verify them, and a parser must not care.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_KEY = ec.generate_private_key(ec.SECP256R1())
_SPKI = _KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(items))


def integer(value: int) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    return tlv(0x02, value.to_bytes(length, "big", signed=True))


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.append(0x80 | (part & 0x7F))
            part >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def explicit(number: int, content: bytes) -> bytes:
    return tlv(0xA0 | number, content)


def utf8(text: str) -> bytes:
    return tlv(0x0C, text.encode())


def utc_time(text: str) -> bytes:
    return tlv(0x17, text.encode())


def generalized_time(text: str) -> bytes:
    return tlv(0x18, text.encode())


def name(common_name: bytes | None = None) -> bytes:
    """An X.501 Name with one CN attribute (already encoded as any string type), or an empty one."""
    if common_name is None:
        return seq()
    return seq(set_(seq(oid("2.5.4.3"), common_name)))


ECDSA_SHA256 = seq(oid("1.2.840.10045.4.3.2"))
SAN_OID = "2.5.29.17"


def extension(extension_oid: str, value: bytes, critical: bool = False) -> bytes:
    flag = tlv(0x01, b"\xff") if critical else b""
    return seq(oid(extension_oid), flag, tlv(0x04, value))


def san(dns_names: Iterable[str]) -> bytes:
    return extension(SAN_OID, seq(*(tlv(0x82, n.encode()) for n in dns_names)))


def certificate(
    *,
    version: bytes | None = explicit(0, integer(2)),
    serial: bytes = integer(0x1234),
    not_before: bytes = utc_time("250101000000Z"),
    not_after: bytes = utc_time("350101000000Z"),
    subject: bytes = name(utf8("hostile.test")),
    issuer: bytes = name(utf8("hostile CA")),
    extensions: list[bytes] | None = None,
    spki: bytes = _SPKI,
) -> bytes:
    """The DER of a certificate with exactly these (pre-encoded) fields."""
    tbs = seq(
        version or b"",
        serial,
        ECDSA_SHA256,
        issuer,
        seq(not_before, not_after),
        subject,
        spki,
        explicit(3, seq(*extensions)) if extensions is not None else b"",
    )
    return seq(tbs, ECDSA_SHA256, tlv(0x03, b"\x00" + b"\x30\x06\x02\x01\x01\x02\x01\x01"))


def pem(der: bytes) -> str:
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


def malformed() -> dict[str, bytes]:
    """Certificates (DER) no parser should accept as they are, each named by what is wrong with it."""
    valid = certificate()
    return {
        "version 7 (no such X.509 version)": certificate(version=explicit(0, integer(7))),
        "negative version": certificate(version=explicit(0, integer(-1))),
        "version is not an INTEGER": certificate(version=explicit(0, utf8("v3"))),
        "month 13": certificate(not_after=utc_time("351301000000Z")),
        "February 30th": certificate(not_after=generalized_time("20350230000000Z")),
        "time without Z": certificate(not_after=utc_time("350101000000")),
        "time with a letter in it": certificate(not_before=utc_time("25010100000aZ")),
        "empty time": certificate(not_after=utc_time("")),
        "validity holds an INTEGER": certificate(not_after=integer(5)),
        "UTCTime with a four-digit year": certificate(not_after=utc_time("20350101000000Z")),
        "GeneralizedTime with fractional seconds": certificate(
            not_after=generalized_time("20350101000000.123Z")
        ),
        "serial is not an INTEGER": certificate(serial=utf8("1234")),
        "SAN extension holds garbage": certificate(extensions=[extension(SAN_OID, b"\x30\x05\x82\x10ab")]),
        "SAN holds a DNS name that is not ASCII": certificate(
            extensions=[extension(SAN_OID, seq(tlv(0x82, "bücher.test".encode())))]
        ),
        "the same extension twice": certificate(extensions=[san(["a.test"]), san(["b.test"])]),
        "extension value is not an OCTET STRING": certificate(extensions=[seq(oid(SAN_OID), utf8("a.test"))]),
        "basicConstraints is garbage": certificate(extensions=[extension("2.5.29.19", b"\xff\xff")]),
        "key usage holds a BOOLEAN": certificate(extensions=[extension("2.5.29.15", tlv(0x01, b"\x00"))]),
        "public key is garbage": certificate(spki=seq(seq(oid("1.2.840.10045.2.1")), tlv(0x03, b"\x00\x01"))),
        "subject CN is a truncated UTF8String": certificate(subject=name(b"\x0c\x05ab")),
        "truncated in the middle": valid[: len(valid) // 2],
        "one byte short": valid[:-1],
        "trailing garbage": valid + b"\x00\x01\x02",
        "indefinite length (BER, not DER)": b"\x30\x80" + valid[2:] + b"\x00\x00",
        "length longer than the data": b"\x30\x84\x7f\xff\xff\xff" + valid[2:],
        "just a SEQUENCE": seq(),
        "a SEQUENCE of nothing useful": seq(integer(1), integer(2), integer(3)),
        "a single zero byte": b"\x00",
        "not DER at all": b"this is no certificate, not even close",
    }


def odd_but_readable() -> dict[str, bytes]:
    """Certificates a parser accepts although their values are unusual: certcheck must read each."""
    return {
        "notAfter 99991231235959Z (RFC 5280's no well-defined expiration)": certificate(
            not_after=generalized_time("99991231235959Z")
        ),
        "notBefore in year 1": certificate(not_before=generalized_time("00010101000000Z")),
        "year 1 to year 9999": certificate(
            not_before=generalized_time("00010101000000Z"), not_after=generalized_time("99991231235959Z")
        ),
        "already expired in year 1": certificate(
            not_before=generalized_time("00010101000000Z"), not_after=generalized_time("00010102000000Z")
        ),
        "notBefore in year 9999": certificate(
            not_before=generalized_time("99991231000000Z"), not_after=generalized_time("99991231235959Z")
        ),
        "version 1 (no version field)": certificate(version=None),
        "empty subject and issuer": certificate(subject=name(), issuer=name()),
        "CN as a BMPString": certificate(subject=name(tlv(0x1E, "wide.test".encode("utf-16-be")))),
        "CN as a T61String of Latin-1": certificate(subject=name(tlv(0x14, "caf\xe9".encode("latin-1")))),
        "CN of 10,000 characters": certificate(subject=name(utf8("x" * 10_000))),
        "a 20-byte serial": certificate(serial=integer(2**159 - 1)),
        "a 40-byte serial": certificate(serial=integer(2**319 - 1)),
        "an unknown critical extension": certificate(
            extensions=[extension("1.3.6.1.4.1.99999.1", b"\x05\x00", critical=True)]
        ),
        "an empty extension list": certificate(extensions=[]),
        "a SAN of 5,000 DNS names": certificate(
            extensions=[san(f"host-{i}.hostile.test" for i in range(5000))]
        ),
    }
