"""Turning raw Kubernetes objects into bus messages. Pure: no I/O.

Only the facts of certificates (dates, names, serial, fingerprint) ever leave this module: each
certificate is decoded here, once for every service; private keys and every other Secret value are
dropped here, in the watcher, and never reach the bus.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from schemas import annotations as ann
from schemas.messages import (
    TARGET_FIELDS,
    CertCheckObserved,
    Certificate,
    CertificateObserved,
    CertSource,
    ClusterSourceObserved,
    ConfigMapObserved,
    HygienePolicy,
    LabelSelector,
    NotificationSpec,
    NotificationTarget,
    SecretObserved,
)
from services.domain.chains import ANCHOR_KEY, CHAIN_KEY, anchor_problem
from services.domain.decode import MAX_VALUE_BYTES, is_keystore_key
from services.domain.sources import read_value, with_problem
from services.domain.times import parse_rfc3339
from services.watcher.passwords import ReferencedPassword

TLS_TYPE = "kubernetes.io/tls"
CERT_SUFFIXES = (".crt", ".pem", ".cer", ".der", ".cert")
CERT_KEYS = ("tls.crt", "ca.crt")
MAX_KEYS_SCANNED = 5000  # a Secret with more keys is reported, its other keys not read
MAX_OTHER_KEYS = 500  # names of keys without certificates, listed so a CertCheck naming one can say so
MAX_CERT_BYTES_PER_SECRET = 512 << 10  # keeps every message well under NATS's 1 MiB payload limit


class ManagedFields(msgspec.Struct):
    manager: str = ""
    fieldsV1: msgspec.Raw = msgspec.Raw(b"null")  # decoded only where certcheck's annotations are


class _AnnotationFields(msgspec.Struct):
    annotations: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict, name="f:annotations")


class _Fields(msgspec.Struct):
    metadata: _AnnotationFields = msgspec.field(default_factory=_AnnotationFields, name="f:metadata")


_fields = msgspec.json.Decoder(_Fields | None)


class ObjectMeta(msgspec.Struct):
    name: str
    uid: str
    resourceVersion: str
    namespace: str = ""
    generation: int = 0
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    managedFields: list[ManagedFields] | None = None


def edited_annotations(meta: ObjectMeta) -> list[str]:
    """certcheck's annotations that someone else set last (a hand edit), by the object's managedFields."""
    ours = ann.owned(meta.annotations)
    if not ours:
        return []
    edited: set[str] = set()
    for entry in meta.managedFields or []:
        if entry.manager in ann.OUR_MANAGERS:
            continue
        try:
            fields = _fields.decode(entry.fieldsV1)
        except msgspec.MsgspecError:
            continue
        if fields is not None:
            edited.update(k.removeprefix("f:") for k in fields.metadata.annotations)
    return sorted(edited & set(ours))


class RawSecret(msgspec.Struct):
    metadata: ObjectMeta
    type: str = "Opaque"
    data: dict[str, str] | None = None


class RawConfigMap(msgspec.Struct):
    metadata: ObjectMeta
    data: dict[str, str] | None = None  # text values
    binaryData: dict[str, str] | None = None  # base64 values


class RawCertCheckSpec(msgspec.Struct):
    selector: LabelSelector | None = None
    configMapSelector: LabelSelector | None = None
    threshold: int = 30
    keys: list[str] | None = None
    notification: msgspec.Raw = msgspec.Raw(b"null")
    policy: msgspec.Raw = msgspec.Raw(b"null")


class RawCertCheck(msgspec.Struct):
    metadata: ObjectMeta
    spec: RawCertCheckSpec = msgspec.field(default_factory=RawCertCheckSpec)
    status: msgspec.Raw = msgspec.Raw(b"null")


class _CertificateSpec(msgspec.Struct):
    secretName: str = ""


class _CertificateStatus(msgspec.Struct):
    renewalTime: str | None = None


class RawCertificate(msgspec.Struct):
    """A cert-manager Certificate, as much of it as certcheck reads."""

    metadata: ObjectMeta
    spec: _CertificateSpec = msgspec.field(default_factory=_CertificateSpec)
    status: _CertificateStatus = msgspec.field(default_factory=_CertificateStatus)


def certificate_observed(certificate: RawCertificate) -> CertificateObserved:
    """The Secret a Certificate writes and its renewal time (None when it has none, or none readable)."""
    meta = certificate.metadata
    return CertificateObserved(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        secret_name=certificate.spec.secretName[:253],
        renewal_time=parse_rfc3339(certificate.status.renewalTime),
    )


def _looks_like_certificate_key(key: str) -> bool:
    return key in CERT_KEYS or is_keystore_key(key) or key.lower().endswith(CERT_SUFFIXES)


def _is_private(key: str) -> bool:
    lowered = key.lower()
    return lowered.endswith(".key") or lowered == "tls.key" or "password" in lowered or "private" in lowered


def read_cert_source(
    key: str,
    encoded: str | None,
    decoded: dict[str, bytes] | None = None,
    referenced: ReferencedPassword | None = None,
) -> CertSource:
    """The certificates under one base64-encoded data key, or why there are none."""
    return read_cert_value(key, encoded, decoded, referenced)[0]


def read_cert_value(
    key: str,
    encoded: str | None,
    decoded: dict[str, bytes] | None = None,
    referenced: ReferencedPassword | None = None,
) -> tuple[CertSource, tuple[str, ...]]:
    """``read_cert_source``, and the certificates as PEM."""
    if encoded is None:
        return CertSource(key, error=f"key {key} is missing"), ()
    if len(encoded) > MAX_VALUE_BYTES * 4 // 3 + 4:
        return CertSource(key, error=f"key {key} is too large ({len(encoded)} bytes encoded)"), ()
    try:
        value = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return CertSource(key, error=f"key {key} is not valid base64"), ()
    return _read(key, value, decoded or {}, referenced)


def _source(
    key: str, value: bytes, decoded: dict[str, bytes], referenced: ReferencedPassword | None = None
) -> CertSource:
    return _read(key, value, decoded, referenced)[0]


def _read(
    key: str, value: bytes, decoded: dict[str, bytes], referenced: ReferencedPassword | None = None
) -> tuple[CertSource, tuple[str, ...]]:
    """The source of one key, and its certificates as PEM (for the checks across keys)."""
    first = (referenced.password,) if referenced and referenced.password is not None else ()
    source, pems = read_value(key, value, decoded, first)
    error = source.error
    if referenced and referenced.problem and error and "password" in error:
        return CertSource(key, error=f"{error}; {referenced.describe()} {referenced.problem}"), ()
    return source, pems


def _anchored(sources: list[CertSource], pems: dict[str, tuple[str, ...]]) -> list[CertSource]:
    """``tls.crt``'s last certificate, with what is wrong when ``ca.crt`` issues none of its chain."""
    problem = anchor_problem(pems.get(CHAIN_KEY, ()), pems.get(ANCHOR_KEY, ()))
    if problem is None:
        return sources
    anchored = []
    for source in sources:
        if source.key == CHAIN_KEY and source.certs:
            last = source.certs[-1]
            joined = f"{last.chain_problem}; {problem}" if last.chain_problem else problem
            source = msgspec.structs.replace(source, certs=[*source.certs[:-1], with_problem(last, joined)])
        anchored.append(source)
    return anchored


def _wire_size(cert: Certificate) -> int:
    """About what ``cert`` takes in a message (an upper bound; encoding it to know costs more)."""
    names = (cert.subject_cn, cert.issuer_cn, cert.error, cert.chain_problem, cert.origin, *cert.dns_names)
    return 200 + sum(len(name) + 3 for name in names if name)


def bounded_sources(sources: list[CertSource]) -> list[CertSource]:
    budget = MAX_CERT_BYTES_PER_SECRET
    bounded = []
    for source in sources:
        size = sum(_wire_size(cert) for cert in source.certs)
        if size > budget:
            bounded.append(
                CertSource(
                    source.key,
                    error=f"key {source.key} holds too many certificates "
                    f"({len(source.certs)} certificates, about {size} bytes of facts)",
                )
            )
            continue
        budget -= size
        bounded.append(source)
    return bounded


def decode_small_values(data: Mapping[str, str]) -> dict[str, bytes]:
    """Values small enough to serve as keystore passwords, decoded (never leave this function's caller)."""
    decoded = {}
    for key, encoded in data.items():
        if len(encoded) <= 4096:
            try:
                decoded[key] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                continue
    return decoded


def _collect(
    kind: str, keys: Iterable[str], read: Callable[[str], CertSource | None]
) -> tuple[list[CertSource], list[str]]:
    """Read ``keys`` in order, at most MAX_KEYS_SCANNED of them: the sources of every key holding (or
    named as if it held) a certificate, and the names of the others. ``read`` returns None to skip a key."""
    sources: list[CertSource] = []
    other_keys: list[str] = []
    for index, key in enumerate(keys):
        if index >= MAX_KEYS_SCANNED:
            sources.append(
                CertSource(key, error=f"{kind} has more than {MAX_KEYS_SCANNED} keys; the rest were not read")
            )
            break
        try:
            source = read(key)
        except Exception as exc:  # one unreadable value never hides the Secret's other keys
            source = CertSource(key, error=f"key {key} could not be read: {type(exc).__name__}")
        if source is None:
            continue
        if source.certs or _looks_like_certificate_key(key):
            sources.append(source)
        elif len(other_keys) < MAX_OTHER_KEYS:
            other_keys.append(key)
    return sources, other_keys


def _configmap_sources(configmap: RawConfigMap) -> tuple[list[CertSource], list[str]]:
    text = configmap.data or {}
    binary = configmap.binaryData or {}

    def read(key: str) -> CertSource:
        # A text value is read as is; a binaryData value is base64, as a Secret's.
        return _source(key, text[key].encode(), {}) if key in text else read_cert_source(key, binary[key])

    return _collect("ConfigMap", sorted({*text, *binary}), read)


def configmap_observed(configmap: RawConfigMap) -> ConfigMapObserved:
    sources, other_keys = _configmap_sources(configmap)
    meta = configmap.metadata
    return ConfigMapObserved(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        labels=meta.labels or {},
        sources=bounded_sources(sources),
        other_keys=other_keys,
    )


def _sources(
    secret_type: str, data: dict[str, str], referenced: ReferencedPassword | None
) -> tuple[list[CertSource], list[str]]:
    """Sources for every key that holds (or is named as if it held) a certificate; other key names."""
    passwords = decode_small_values({k: v for k, v in data.items() if "password" in k.lower()})

    pems: dict[str, tuple[str, ...]] = {}

    def read(key: str) -> CertSource | None:
        if _is_private(key):
            return None
        if key not in CERT_KEYS:
            return read_cert_source(key, data[key], passwords, referenced)
        source, pems[key] = read_cert_value(key, data[key], passwords, referenced)
        return source

    ordered = sorted(data, key=lambda key: (key not in CERT_KEYS, key != "tls.crt", key))
    sources, other_keys = _collect("Secret", ordered, read)
    if secret_type == TLS_TYPE and "tls.crt" not in data:
        sources.insert(0, CertSource("tls.crt", error="key tls.crt is missing"))
    return _anchored(sources, pems), other_keys


class SecretContent(msgspec.Struct, frozen=True, array_like=True):
    """What a Secret's values hold: the sources of its certificate keys and the names of its other keys."""

    sources: list[CertSource]
    other_keys: list[str]


def secret_content(
    secret_type: str, data: dict[str, str], referenced: ReferencedPassword | None = None
) -> SecretContent:
    """``referenced``: the keystore password the Secret points at by annotation, already read."""
    sources, other_keys = _sources(secret_type, data, referenced)
    return SecretContent(bounded_sources(sources), other_keys)


def secret_observed(
    secret: RawSecret, referenced: ReferencedPassword | None = None, content: SecretContent | None = None
) -> SecretObserved:
    """``content``: what ``secret_content`` made of this Secret's values, if it is known already."""
    if content is None:
        content = secret_content(secret.type, secret.data or {}, referenced)
    meta = secret.metadata
    return SecretObserved(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        type=secret.type,
        labels=meta.labels or {},
        annotations=ann.owned(meta.annotations),
        edited_annotations=edited_annotations(meta),
        certificate_name=(meta.annotations or {}).get(ann.CERT_MANAGER_CERTIFICATE, None),
        sources=content.sources,
        other_keys=content.other_keys,
    )


class _RawNotification(msgspec.Struct):
    targets: list[dict[str, Any]] = []


_notification_decoder = msgspec.json.Decoder(_RawNotification | None)


def _target(raw: dict[str, Any]) -> NotificationTarget:
    """A target as the CertCheck gives it: its shared fields, and every other field (an object) the
    settings of the channel it names, for that channel's module in the notifier to read."""
    channels = {
        name: value for name, value in raw.items() if name not in TARGET_FIELDS and isinstance(value, dict)
    }
    shared = {name: value for name, value in raw.items() if name in TARGET_FIELDS}
    return msgspec.convert({**shared, "channels": channels}, NotificationTarget)


def _notification(raw: msgspec.Raw) -> NotificationSpec | None:
    try:
        spec = _notification_decoder.decode(raw)
        return None if spec is None else NotificationSpec([_target(target) for target in spec.targets])
    except msgspec.ValidationError:
        return None  # the CRD schema rejects such specs; an older object must not stop the watch


_policy_decoder = msgspec.json.Decoder(HygienePolicy | None)


def _policy(raw: msgspec.Raw) -> HygienePolicy | None:
    try:
        return _policy_decoder.decode(raw)
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
        keys=certcheck.spec.keys,
        configmap_selector=certcheck.spec.configMapSelector,
        policy=_policy(certcheck.spec.policy),
        status=certcheck.status,
    )


_encoder = msgspec.json.Encoder(order="deterministic")


Observed = (
    SecretObserved | ConfigMapObserved | ClusterSourceObserved | CertificateObserved | CertCheckObserved
)


def digest(observed: Observed) -> str:
    """A fingerprint of all a message says but its resourceVersion (which also changes with writes that
    change nothing certcheck reads). Every field counts, so a field added later cannot be left out."""
    content = _encoder.encode(msgspec.structs.replace(observed, resource_version=""))
    return hashlib.sha256(content).hexdigest()[:32]
