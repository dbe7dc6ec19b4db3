"""Decoding a PEM certificate into the facts certcheck needs (services/domain/certs.py). Pure: no I/O.
The watcher decodes each certificate here once; the evaluator only for messages of older watchers.

Whatever a certificate holds, ``parse_pem_certificate`` returns facts or the reason it cannot: no
exception of any type leaves it (``cryptography`` raises ``InvalidVersion``, ``ValueError`` and others,
some only when a field is first read). Fields certcheck only displays (subject, issuer, DNS names) are
read one by one, so a broken one leaves the dates usable.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.domain.certs import (
    MAX_DNS_NAMES,
    MAX_TEXT,
    CertError,
    CertFacts,
    Parsed,
    describe,
    invalid_dates,
)
from services.domain.times import rfc3339

T = TypeVar("T")


def _common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return text[:MAX_TEXT]


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name[:MAX_TEXT] for name in san.get_values_for_type(x509.DNSName)[:MAX_DNS_NAMES])


def _optional(read: Callable[[], T], default: T) -> T:
    try:
        return read()
    except Exception:  # a display-only field that cannot be read does not make the certificate unreadable
        return default


# A certificate in many Secrets (a CA in every ca.crt) is read once. What a Secret holds is not read again
# when only its metadata changes (the watcher's SecretMemo), so this need not hold every certificate.
@lru_cache(maxsize=8192)
def parse_pem_certificate(pem: str) -> Parsed:
    """Facts of one PEM CERTIFICATE block, or the reason it cannot be read. Cached by content."""
    try:
        with warnings.catch_warnings():
            # Reported as Invalid with the reason, or tolerated, rather than warned about in the logs.
            warnings.simplefilter("ignore")
            return _facts(x509.load_pem_x509_certificate(pem.encode("ascii")))
    except Exception as exc:
        return CertError(f"malformed certificate: {describe(exc)}")


def _facts(cert: x509.Certificate) -> Parsed:
    serial_number = cert.serial_number
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if serial_number <= 0:
        return CertError(
            f"serial number is not positive, which RFC 5280 forbids (notAfter {rfc3339(not_after)})"
        )
    wrong = invalid_dates(not_before, not_after)
    if wrong is not None:
        return wrong
    no_key: tuple[str | None, int | None] = (None, None)
    key_algorithm, key_size = _optional(lambda: _public_key(cert), no_key)
    return CertFacts(
        not_before=not_before,
        not_after=not_after,
        subject_cn=_optional(lambda: _common_name(cert.subject), None),
        issuer_cn=_optional(lambda: _common_name(cert.issuer), None),
        serial_number=format(serial_number, "x"),
        fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        dns_names=_optional(lambda: _dns_names(cert), ()),
        key_algorithm=key_algorithm,
        key_size=key_size,
        signature_algorithm=_optional(lambda: _signature_algorithm(cert), None),
        signature_hash=_optional(lambda: _signature_hash(cert), None),
    )


def _public_key(cert: x509.Certificate) -> tuple[str | None, int | None]:
    """The public key's algorithm and size in bits (an EC key's: its curve's)."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__.removesuffix("PublicKey")[:MAX_TEXT], None


def _signature_algorithm(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    return str(getattr(oid, "_name", None) or oid.dotted_string)[:MAX_TEXT]


def _signature_hash(cert: x509.Certificate) -> str | None:
    algorithm = cert.signature_hash_algorithm
    return algorithm.name if algorithm is not None else None
