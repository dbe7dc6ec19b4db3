"""The public expiry-event contract: what other systems subscribe to (docs/events.md).

Each event is one fact about one certificate as one CertCheck sees it (the state depends on the
CertCheck's threshold): first seen, its state changed, rotated (the same slot holds another
certificate), removed. It travels as a CloudEvent 1.0 in binary content mode over NATS: the attributes
in ``ce-`` headers (percent-encoded as the binding asks), the JSON ``data`` as the body.

Subjects: ``certcheck.v1.events.<cluster>.<namespace>.<type>.<objectkind>.<object name>``. The cluster
comes first so that one NATS system can carry many clusters' events; the namespace next, as in every
certcheck subject (the unit of ordering and of access: a team subscribes to its namespaces); then the
type, then the object (its name last, since a Kubernetes name may hold dots and so span tokens).

This module is the contract: changing a field, a type or a subject is a new version (``v2`` types and
schemas beside the ``v1`` ones), never an edit. ``python -m schemas.events DIR`` writes the JSON Schemas
(``schemas/events/v1/``), which a test keeps equal to this module.
"""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Literal

import msgspec

from schemas import subjects

EVENTS_ALL = f"{subjects.PREFIX}.events.>"
SPEC_VERSION = "1.0"
TYPE_PREFIX = "dev.certcheck.certificate"
SCHEMA_BASE = "https://certcheck.dev/schemas/events/v1"

# The subject token of each type, and its CloudEvents type.
DISCOVERED = "discovered"
STATE_CHANGED = "statechanged"
ROTATED = "rotated"
REMOVED = "removed"
TOKENS = (DISCOVERED, STATE_CHANGED, ROTATED, REMOVED)
# The fields each type always carries, beyond those every event carries.
REQUIRED_BY_TYPE = {
    DISCOVERED: (),
    STATE_CHANGED: ("previousState",),
    ROTATED: ("certificate", "previousCertificate"),
    REMOVED: ("removedBecause",),
}

# Secrets and ConfigMaps, and the cluster-scoped objects whose CA bundles a ClusterCertCheck reads (their
# events' namespace is subjects.CLUSTER_NAMESPACE).
ObjectKind = Literal[
    "Secret",
    "ConfigMap",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "CustomResourceDefinition",
]
CertState = Literal["Valid", "ExpiringSoon", "Expired", "NotYetValid", "Invalid", "RenewalOverdue"]
RemovedBecause = Literal["ObjectDeleted", "KeyRemoved", "NoLongerSelected", "CertCheckDeleted"]


def source(cluster: str, namespace: str, certcheck: str) -> str:
    """The CloudEvents source: the CertCheck, or the ClusterCertCheck whose share of a namespace it is."""
    if certcheck.startswith(subjects.SHARE_PREFIX):
        return f"/clusters/{cluster}/clustercertchecks/{certcheck.removeprefix(subjects.SHARE_PREFIX)}"
    return f"/clusters/{cluster}/namespaces/{namespace}/certchecks/{certcheck}"


def event_type(token: str) -> str:
    return f"{TYPE_PREFIX}.{token}.v1"


class CertificateFacts(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """What a certificate says of itself (never key material)."""

    fingerprint_sha256: str  # of the DER, lower-case hex: the certificate's identity
    serial_number: str = ""  # lower-case hex
    subject: str | None = None  # the subject's common name
    issuer: str | None = None  # the issuer's common name
    dns_names: list[str] = []
    not_before: str | None = None  # RFC 3339, UTC
    not_after: str | None = None


class CertificateEvent(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """The ``data`` of every event type: where the certificate is, which CertCheck saw it, its facts
    and its state; the fields of one type are filled in for that type only."""

    cluster: str
    namespace: str
    object_kind: ObjectKind
    object_name: str
    object_uid: str
    key: str  # the data key of the Secret or ConfigMap
    index: int  # position in that key's chain or bundle (0 = first)
    certcheck: str
    threshold_days: int
    state: CertState
    certificate: CertificateFacts | None = None  # None: the key holds nothing readable (Invalid)
    reason: str | None = None  # why the certificate is Invalid
    previous_state: CertState | None = None  # statechanged
    previous_certificate: CertificateFacts | None = None  # rotated: what the slot held before
    removed_because: RemovedBecause | None = None  # removed


class CloudEvent(msgspec.Struct, frozen=True):
    """One event as it goes on the bus: its subject, its CloudEvents headers and its body."""

    subject: str
    headers: dict[str, str]
    data: bytes


def event_subject(cluster: str, namespace: str, token: str, object_kind: str, object_name: str) -> str:
    return f"{subjects.PREFIX}.events.{cluster}.{namespace}.{token}.{object_kind.lower()}.{object_name}"


def event_id(token: str, event: CertificateEvent) -> str:
    """The id of a fact, the same however often it is derived: what happened (the type and the states),
    to which certificate (cluster, CertCheck, object uid, key, index, fingerprint), and for a rotation
    what it replaced. It is also the Nats-Msg-Id, so the stream keeps a fact once."""
    fingerprint = event.certificate.fingerprint_sha256 if event.certificate else ""
    before = event.previous_certificate.fingerprint_sha256 if event.previous_certificate else ""
    parts = (
        token,
        event.cluster,
        event.namespace,
        event.certcheck,
        event.object_uid,
        event.key,
        str(event.index),
        fingerprint,
        before,
        event.previous_state or "",
        event.state,
        event.removed_because or "",
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _header_value(value: str) -> str:
    """A header value as the CloudEvents NATS binding asks: printable ASCII, with ``%``, and anything
    outside printable ASCII, percent-encoded (UTF-8). Most values need nothing: they are returned as
    they are, without the encoder's cost (several headers per event, thousands of events at start)."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return urllib.parse.quote(value, safe=_HEADER_SAFE)


def cloud_event(token: str, event: CertificateEvent, time: str) -> CloudEvent:
    """The event for a fact: its subject, ``ce-`` headers (also ``Content-Type`` and ``Nats-Msg-Id``)
    and JSON data. ``time`` (RFC 3339) is when certcheck saw the fact."""
    if token not in TOKENS:
        raise ValueError(f"not an event type: {token!r}")
    identity = event_id(token, event)
    attributes = {
        "specversion": SPEC_VERSION,
        "id": identity,
        "source": source(event.cluster, event.namespace, event.certcheck),
        "type": event_type(token),
        "subject": f"{event.object_kind.lower()}s/{event.object_name}/{event.key}/{event.index}",
        "time": time,
        "datacontenttype": "application/json",
        "dataschema": f"{SCHEMA_BASE}/{token}.json",
    }
    headers = {f"ce-{name}": _header_value(value) for name, value in attributes.items()}
    headers["Content-Type"] = "application/json"
    headers["Nats-Msg-Id"] = identity
    subject = event_subject(event.cluster, event.namespace, token, event.object_kind, event.object_name)
    return CloudEvent(subject, headers, msgspec.json.encode(event))


def json_schemas() -> dict[str, str]:
    """The JSON Schema of each event type's data, by file name, as committed under schemas/events/v1/."""
    _, components = msgspec.json.schema_components((CertificateEvent,), ref_template="#/$defs/{name}")
    schemas = {}
    for token in TOKENS:
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_BASE}/{token}.json",
            "title": event_type(token),
            "$ref": "#/$defs/CertificateEvent",
            "required": list(REQUIRED_BY_TYPE[token]),
            "$defs": components,
        }
        schemas[f"{token}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return schemas


def write_schemas(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in json_schemas().items():
        (directory / name).write_text(text)


if __name__ == "__main__":
    write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas/events/v1"))
