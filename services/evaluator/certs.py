"""Decoding certificates into the facts certcheck needs. Pure: no I/O."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CertFacts:
    not_before: datetime
    not_after: datetime
    subject_cn: str | None
    issuer_cn: str | None
    serial_number: str
    fingerprint: str  # sha256 of the DER, hex
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertError:
    reason: str


Parsed = CertFacts | CertError


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _common_name(name: x509.Name) -> str | None:
    try:
        values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@lru_cache(maxsize=65536)
def parse_pem_certificate(pem: str) -> Parsed:
    """Facts of one PEM CERTIFICATE block, or the reason it cannot be read. Cached by content."""
    try:
        with warnings.catch_warnings():
            # Reported below as Invalid, with the reason, rather than warned about in the logs.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
            serial_number = cert.serial_number
    except (ValueError, UnicodeEncodeError) as exc:
        return CertError(f"malformed certificate: {exc}")
    try:
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if serial_number <= 0:
            return CertError(
                f"serial number is not positive, which RFC 5280 forbids (notAfter {_rfc3339(not_after)})"
            )
        if not_before > not_after:
            return CertError(f"notBefore {_rfc3339(not_before)} is after notAfter {_rfc3339(not_after)}")
        return CertFacts(
            not_before=not_before,
            not_after=not_after,
            subject_cn=_common_name(cert.subject),
            issuer_cn=_common_name(cert.issuer),
            serial_number=format(serial_number, "x"),
            fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
            dns_names=_dns_names(cert),
        )
    except Exception as exc:  # cryptography parses lazily: a bad field raises only when it is read
        return CertError(f"malformed certificate: {exc}")


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))
