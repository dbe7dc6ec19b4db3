"""Certificate facts: what certcheck knows of one certificate, or why it cannot be read. Pure, and
free of ``cryptography``: the watcher decodes each certificate once (services/domain/pem.py) and
publishes its facts; the evaluator and the exporter only read them (``from_wire``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.messages import Certificate
from services.domain.times import rfc3339

MAX_TEXT = 256  # subject and issuer names beyond this are cut (RFC 5280 bounds a CN at 64)
MAX_REASON = 300
MAX_NAME = 64  # an algorithm's name
MAX_KEY_BITS = 1 << 16
MAX_DNS_NAMES = 100  # kept per certificate: the status shows fewer, the rest is counted, not stored


@dataclass(frozen=True, slots=True)
class CertFacts:
    not_before: datetime
    not_after: datetime
    subject_cn: str | None
    issuer_cn: str | None
    serial_number: str
    fingerprint: str  # sha256 of the DER, hex
    dns_names: tuple[str, ...] = ()
    # Hygiene (services/domain/hygiene.py): the public key, the signature, and what is wrong with the
    # chain this certificate is part of (None: nothing, or not part of one).
    key_algorithm: str | None = None  # RSA, EC, Ed25519, Ed448, DSA
    key_size: int | None = None  # bits (an EC key: its curve's)
    signature_algorithm: str | None = None  # e.g. sha256WithRSAEncryption
    signature_hash: str | None = None  # e.g. sha256; None for EdDSA or an unknown algorithm
    chain_problem: str | None = None
    origin: str | None = None  # where in the key's value (a kubeconfig's user or cluster CA)


@dataclass(frozen=True, slots=True)
class CertError:
    reason: str


Parsed = CertFacts | CertError


def describe(exc: BaseException) -> str:
    """An exception as a reason: its type and its first line, bounded."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:MAX_REASON] if text else type(exc).__name__


def invalid_dates(not_before: datetime, not_after: datetime) -> CertError | None:
    if not_before > not_after:
        return CertError(f"notBefore {rfc3339(not_before)} is after notAfter {rfc3339(not_after)}")
    return None


def to_wire(parsed: Parsed) -> Certificate:
    if isinstance(parsed, CertError):
        return Certificate(error=parsed.reason)
    return Certificate(
        not_before=parsed.not_before,
        not_after=parsed.not_after,
        subject_cn=parsed.subject_cn,
        issuer_cn=parsed.issuer_cn,
        serial_number=parsed.serial_number,
        fingerprint=parsed.fingerprint,
        dns_names=list(parsed.dns_names),
        key_algorithm=parsed.key_algorithm,
        key_size=parsed.key_size,
        signature_algorithm=parsed.signature_algorithm,
        signature_hash=parsed.signature_hash,
        chain_problem=parsed.chain_problem,
        origin=parsed.origin,
    )


def from_wire(cert: Certificate) -> Parsed:
    """The facts a message carries, checked again: whoever can publish on the bus is not trusted to
    send dates in order, bounded names, or dates at all."""
    if cert.error is not None:
        return CertError(cert.error[:MAX_REASON])
    if cert.not_before is None or cert.not_after is None:
        return CertError("the certificate's facts lack notBefore or notAfter")
    if cert.not_before.tzinfo is None or cert.not_after.tzinfo is None:
        return CertError("the certificate's dates name no time zone")
    wrong = invalid_dates(cert.not_before, cert.not_after)
    if wrong is not None:
        return wrong
    return CertFacts(
        not_before=cert.not_before,
        not_after=cert.not_after,
        subject_cn=cert.subject_cn[:MAX_TEXT] if cert.subject_cn is not None else None,
        issuer_cn=cert.issuer_cn[:MAX_TEXT] if cert.issuer_cn is not None else None,
        serial_number=cert.serial_number[:MAX_TEXT],
        fingerprint=cert.fingerprint[:MAX_TEXT],
        dns_names=tuple(name[:MAX_TEXT] for name in cert.dns_names[:MAX_DNS_NAMES]),
        key_algorithm=_bounded(cert.key_algorithm, MAX_NAME),
        key_size=cert.key_size if cert.key_size is not None and 0 < cert.key_size <= MAX_KEY_BITS else None,
        signature_algorithm=_bounded(cert.signature_algorithm, MAX_NAME),
        signature_hash=_bounded(cert.signature_hash, MAX_NAME),
        chain_problem=_bounded(cert.chain_problem, MAX_REASON),
        origin=_bounded(cert.origin, MAX_TEXT),
    )


def _bounded(text: str | None, limit: int) -> str | None:
    return text[:limit] if text is not None else None
