"""Turning raw Kubernetes objects into bus messages. Pure: no I/O.

Only PEM CERTIFICATE blocks ever leave this module: private keys and every other Secret value are
dropped here, in the watcher, and never reach the bus.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

import msgspec

from schemas import annotations as ann
from schemas.messages import (
    CertCheckObserved,
    CertSource,
    LabelSelector,
    NotificationSpec,
    SecretObserved,
)

CERT_KEYS = ("tls.crt", "ca.crt")
REQUIRED_KEYS = ("tls.crt",)
MAX_VALUE_BYTES = 1 << 20  # a certificate value larger than this is reported, not read
MAX_PEM_BYTES_PER_SECRET = 512 << 10  # keeps every message well under NATS's 1 MiB payload limit

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n\t ]+?)-----END CERTIFICATE-----")


class ObjectMeta(msgspec.Struct):
    name: str
    uid: str
    resourceVersion: str
    namespace: str = ""
    generation: int = 0
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RawSecret(msgspec.Struct):
    metadata: ObjectMeta
    type: str = "Opaque"
    data: dict[str, str] | None = None


class RawCertCheckSpec(msgspec.Struct):
    selector: LabelSelector | None = None
    threshold: int = 30
    notification: msgspec.Raw = msgspec.Raw(b"null")


class RawCertCheck(msgspec.Struct):
    metadata: ObjectMeta
    spec: RawCertCheckSpec = msgspec.field(default_factory=RawCertCheckSpec)
    status: msgspec.Raw = msgspec.Raw(b"null")


def _pem_blocks(value: bytes) -> list[str]:
    blocks = []
    for match in _PEM_CERT.finditer(value):
        body = b"".join(match.group(1).split())
        lines = [body[i : i + 64].decode("ascii") for i in range(0, len(body), 64)]
        blocks.append("-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n")
    return blocks


def read_cert_source(key: str, encoded: str | None) -> CertSource:
    """The certificates under one data key, or why there are none."""
    if encoded is None:
        return CertSource(key, error=f"key {key} is missing")
    if len(encoded) > MAX_VALUE_BYTES * 4 // 3 + 4:
        return CertSource(key, error=f"key {key} is too large ({len(encoded)} bytes encoded)")
    try:
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return CertSource(key, error=f"key {key} is not valid base64")
    if not value.strip():
        return CertSource(key, error=f"key {key} is empty")
    blocks = _pem_blocks(value)
    if not blocks:
        return CertSource(key, error=f"no PEM CERTIFICATE block in key {key}")
    return CertSource(key, pem=blocks)


def _bounded(sources: list[CertSource]) -> list[CertSource]:
    budget = MAX_PEM_BYTES_PER_SECRET
    bounded = []
    for source in sources:
        size = sum(len(block) for block in source.pem)
        if size > budget:
            bounded.append(
                CertSource(
                    source.key,
                    error=f"key {source.key} holds too many certificates "
                    f"({len(source.pem)} blocks, {size} bytes)",
                )
            )
            continue
        budget -= size
        bounded.append(source)
    return bounded


def secret_observed(secret: RawSecret) -> SecretObserved:
    data = secret.data or {}
    sources = [
        read_cert_source(key, data.get(key)) for key in CERT_KEYS if key in data or key in REQUIRED_KEYS
    ]
    meta = secret.metadata
    return SecretObserved(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        type=secret.type,
        labels=meta.labels or {},
        annotations=ann.owned(meta.annotations),
        sources=_bounded(sources),
    )


_notification_decoder = msgspec.json.Decoder(NotificationSpec | None)


def _notification(raw: msgspec.Raw) -> NotificationSpec | None:
    try:
        spec: NotificationSpec | None = _notification_decoder.decode(raw)
        return spec
    except msgspec.ValidationError:
        return None  # the CRD schema rejects such specs; an older object must not stop the watch


def certcheck_observed(certcheck: RawCertCheck) -> CertCheckObserved:
    meta = certcheck.metadata
    return CertCheckObserved(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        generation=meta.generation,
        threshold_days=certcheck.spec.threshold,
        selector=certcheck.spec.selector,
        notification=_notification(certcheck.spec.notification),
        status=certcheck.status,
    )


_encoder = msgspec.json.Encoder(order="deterministic")


def digest(observed: SecretObserved | CertCheckObserved) -> str:
    """A fingerprint of everything that matters downstream (the resourceVersion excluded)."""
    if isinstance(observed, SecretObserved):
        content = _encoder.encode(
            (observed.uid, observed.type, observed.labels, observed.annotations, observed.sources)
        )
    else:
        content = _encoder.encode(
            (
                observed.uid,
                observed.generation,
                observed.threshold_days,
                observed.selector,
                observed.notification,
                observed.status,
            )
        )
    return hashlib.sha256(content).hexdigest()[:32]
