"""The Kubernetes writer shared by the recorder and the notifier: idempotent writes, each a single request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from schemas.annotations import FIELD_MANAGER
from schemas.messages import (
    AnnotationPatch,
    CertCheckStatus,
    ClusterCertCheckStatus,
    EventIntent,
    NotificationFailure,
)
from services.common.kube import (
    CERTCHECK_GROUP,
    CERTCHECK_PLURAL,
    CERTCHECK_VERSION,
    MERGE_PATCH,
    api_error,
    request,
    secret_path,
)
from services.domain.clusterchecks import PLURAL as CLUSTER_PLURAL
from services.domain.clusterchecks import is_cluster_scoped
from services.domain.times import rfc3339

JSON_PATCH = "application/json-patch+json"

log = logging.getLogger(__name__)

OCCURRENCE = "certcheck.dev/occurrence"
CLUSTER_EVENTS_NAMESPACE = "default"
writes = Counter("certcheck_kubernetes_writes_total", "Writes to the Kubernetes API", ["kind", "outcome"])


class Gone(Exception):
    """The object to write to no longer exists (or is a different object by now)."""


def _certcheck_status_path(namespace: str, name: str) -> str:
    return (
        f"/apis/{CERTCHECK_GROUP}/{CERTCHECK_VERSION}/namespaces/{namespace}/{CERTCHECK_PLURAL}/{name}/status"
        f"?fieldManager={FIELD_MANAGER}"
    )


_encode = msgspec.json.Encoder().encode


def _cluster_check_path(name: str, subresource: str = "") -> str:
    return f"/apis/{CERTCHECK_GROUP}/{CERTCHECK_VERSION}/{CLUSTER_PLURAL}/{name}{subresource}"


class _Meta(msgspec.Struct):
    uid: str = ""
    resourceVersion: str = ""
    generation: int = 0


class _EventMeta(msgspec.Struct):
    resourceVersion: str = ""
    annotations: dict[str, str] = {}


class _Event(msgspec.Struct):
    metadata: _EventMeta = msgspec.field(default_factory=_EventMeta)
    count: int | None = None


class _ClusterCheck(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    status: msgspec.Raw = msgspec.Raw(b"null")


class _Written(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)


def _resource_version(data: bytes) -> str:
    """The resourceVersion of the object a write answered with ("" if the answer says none)."""
    try:
        return msgspec.json.decode(data, type=_Written).metadata.resourceVersion
    except msgspec.DecodeError:
        return ""


@dataclass(frozen=True)
class StatusWrite:
    """What a status write left: the status fields the object holds now, and its resourceVersion."""

    holds: frozenset[str]
    resource_version: str


@dataclass(frozen=True)
class ClusterCheckRead:
    """A ClusterCertCheck as read for a compare-and-set of its status."""

    uid: str
    resource_version: str
    generation: int
    status: msgspec.Raw


class KubeWriter:
    """Writes through the Kubernetes client's own connection pool and authentication. The hot paths
    (patches, Event creation) send pre-encoded bytes and read only the status code: the generated
    models cost about 1 ms of CPU per request, which at ten thousand writes is the bottleneck."""

    def __init__(self, api: client.ApiClient, component: str) -> None:
        """``component``: the service writing (``recorder``, ``notifier``), named as its Events' source."""
        self.api = api
        self.component = component

    def _send(self, method: str, path: str, body: object, content_type: str) -> tuple[int, bytes]:
        return request(self.api, method, path, _encode(body) if body is not None else None, content_type)

    def _write(
        self,
        kind: str,
        method: str,
        path: str,
        body: object,
        content_type: str = MERGE_PATCH,
        gone_is: str = "",
    ) -> int:
        status, data = self._send(method, path, body, content_type)
        return self._outcome(kind, status, data, gone_is)

    def _outcome(self, kind: str, status: int, data: bytes, gone_is: str = "") -> int:
        """Count the write; raise Gone for an object that went (or was re-created), an error for any
        other failure but a conflict (409, returned)."""
        if status < 300:
            writes.labels(kind, "ok").inc()
            return status
        # 422 naming metadata.uid: the object was re-created since (the uid in the patch differs).
        if gone_is and (status in (404, 409) or (status == 422 and b"metadata.uid" in data)):
            writes.labels(kind, "gone").inc()
            raise Gone(gone_is)
        if status != 409:
            writes.labels(kind, "error").inc()
            raise api_error(status, data)
        return status

    def _patch_status(self, namespace: str, name: str, uid: str, fields: dict[str, object]) -> str:
        # The status subresource ignores metadata in a merge patch, so the uid in it guards nothing
        # there: a JSON patch that only tests the uid does (422 for a re-created namesake). The window
        # between the two requests is a delete and re-create in a few milliseconds.
        status, _ = self._send(
            "PATCH",
            _certcheck_status_path(namespace, name),
            [{"op": "test", "path": "/metadata/uid", "value": uid}],
            JSON_PATCH,
        )
        if status in (404, 409, 422):
            writes.labels("status", "gone").inc()
            raise Gone(f"CertCheck {namespace}/{name} (uid {uid})")
        body = {"metadata": {"uid": uid}, "status": fields}
        status, data = self._send("PATCH", _certcheck_status_path(namespace, name), body, MERGE_PATCH)
        self._outcome("status", status, data, f"CertCheck {namespace}/{name}")
        return _resource_version(data) if status < 300 else ""

    def patch_status(
        self,
        namespace: str,
        name: str,
        uid: str,
        status: CertCheckStatus,
        present: frozenset[str] | None = None,
    ) -> StatusWrite:
        """Write the status (all but the notifier's field) of the CertCheck with this uid. Returns the
        status fields it holds now and the resourceVersion the write made. Those fields, passed as
        ``present`` to the next write of the same object, let that one be a single request: a JSON patch
        that tests the uid, sets every field that has a value and removes those of ``present`` that have
        none. If the status is not as ``present`` says (someone removed a field), or the uid differs,
        that patch fails as a whole and the write goes the two-request way, which tells the two apart."""
        # Every field is sent, None as null, so a merge patch also removes what no longer applies.
        fields = msgspec.to_builtins(status)
        fields.pop("notificationFailures", None)  # the notifier's field: never overwritten from here
        holds = frozenset(k for k, v in fields.items() if v is not None)
        if present is not None:
            ops: list[dict[str, object]] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
            ops += [{"op": "add", "path": f"/status/{k}", "value": fields[k]} for k in sorted(holds)]
            ops += [{"op": "remove", "path": f"/status/{k}"} for k in sorted(present - holds) if k in fields]
            code, data = self._send("PATCH", _certcheck_status_path(namespace, name), ops, JSON_PATCH)
            if code < 300:
                writes.labels("status", "ok").inc()
                return StatusWrite(holds, _resource_version(data))
            if code == 404:
                writes.labels("status", "gone").inc()
                raise Gone(f"CertCheck {namespace}/{name}")
        return StatusWrite(holds, self._patch_status(namespace, name, uid, fields))

    def patch_notification_failures(
        self, namespace: str, name: str, uid: str, failures: list[NotificationFailure]
    ) -> None:
        """The notifier's own status field (the recorder never sends it, so neither overwrites the other)."""
        value = [msgspec.to_builtins(f) for f in failures] or None
        self._patch_status(namespace, name, uid, {"notificationFailures": value})

    def read_cluster_check(self, name: str) -> ClusterCheckRead | None:
        """The ClusterCertCheck, or None when there is none of that name."""
        status, data = self._send("GET", _cluster_check_path(name), None, "application/json")
        if status == 404:
            return None
        if status >= 300:
            raise api_error(status, data)
        read = msgspec.json.decode(data, type=_ClusterCheck)
        meta = read.metadata
        return ClusterCheckRead(meta.uid, meta.resourceVersion, meta.generation, read.status)

    def replace_cluster_status(
        self, name: str, read: ClusterCheckRead, status: ClusterCertCheckStatus
    ) -> bool:
        """Set the status of the ClusterCertCheck as ``read``, if it is still that version (a
        compare-and-set: False when it changed since, or is gone)."""
        ops = [
            {"op": "test", "path": "/metadata/uid", "value": read.uid},
            {"op": "test", "path": "/metadata/resourceVersion", "value": read.resource_version},
            {"op": "add", "path": "/status", "value": msgspec.to_builtins(status)},
        ]
        path = f"{_cluster_check_path(name, '/status')}?fieldManager={FIELD_MANAGER}"
        code, data = self._send("PATCH", path, ops, JSON_PATCH)
        if code < 300:
            writes.labels("status", "ok").inc()
            return True
        if code in (404, 409, 422):
            writes.labels("status", "conflict").inc()
            return False
        writes.labels("status", "error").inc()
        raise api_error(code, data)

    def patch_annotations(self, patch: AnnotationPatch) -> None:
        body = {"metadata": {"uid": patch.uid, "annotations": patch.annotations}}
        self._write(
            "annotations",
            "PATCH",
            f"{secret_path(patch.namespace, patch.name)}?fieldManager={FIELD_MANAGER}",
            body,
            gone_is=f"Secret {patch.namespace}/{patch.name}",
        )

    def emit_event(self, intent: EventIntent) -> str:
        """Create the Event named by its dedup key. If it exists, a new occurrence of the same change
        increments its count (aggregation); the same occurrence again is a no-op.
        Returns "created", "aggregated" or "duplicate"."""
        now = datetime.now(UTC)
        name = f"{intent.involved_name[:200]}.{intent.dedup_key}"
        stamp = rfc3339(now)
        involved = {
            "apiVersion": intent.involved_api_version,
            "kind": intent.involved_kind,
            "name": intent.involved_name,
            "namespace": intent.namespace,
            "uid": intent.involved_uid,
        }
        namespace = intent.namespace
        if is_cluster_scoped(intent.involved_kind):
            # As Kubernetes' own recorder does: a cluster-scoped object's Events live in "default".
            del involved["namespace"]
            namespace = CLUSTER_EVENTS_NAMESPACE
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {OCCURRENCE: intent.occurrence},
            },
            "involvedObject": involved,
            "reason": intent.reason,
            "message": intent.message[:1024],
            "type": intent.type,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": f"certcheck-{self.component}"},
            "reportingComponent": f"certcheck.dev/{self.component}",
            "reportingInstance": f"certcheck-{self.component}",
        }
        status, _ = self._send("POST", f"/api/v1/namespaces/{namespace}/events", event, "application/json")
        if status < 300:
            writes.labels("event", "ok").inc()
            return "created"
        if status == 409:
            return self._aggregate(name, namespace, intent, now)
        if status == 404:  # the namespace is being deleted
            writes.labels("event", "gone").inc()
            return "duplicate"
        writes.labels("event", "error").inc()
        raise ApiException(status=status, reason="creating an Event failed")

    def _aggregate(self, name: str, namespace: str, intent: EventIntent, now: datetime) -> str:
        path = f"/api/v1/namespaces/{namespace}/events/{name}"
        status, data = self._send("GET", path, None, "")
        if status >= 300:
            writes.labels("event", "error").inc()
            raise api_error(status, data)
        existing = msgspec.json.decode(data, type=_Event)
        if existing.metadata.annotations.get(OCCURRENCE) == intent.occurrence:
            writes.labels("event", "duplicate").inc()
            return "duplicate"
        patch = {
            "metadata": {
                "annotations": {OCCURRENCE: intent.occurrence},
                "resourceVersion": existing.metadata.resourceVersion,
            },
            "count": (existing.count or 1) + 1,
            "lastTimestamp": rfc3339(now),
            "message": intent.message[:1024],
        }
        # The resourceVersion makes this a compare-and-set: two replicas never both count one occurrence.
        status, data = self._send("PATCH", path, patch, MERGE_PATCH)
        if status >= 300:
            writes.labels("event", "error").inc()
            raise api_error(status, data)
        writes.labels("event", "aggregated").inc()
        return "aggregated"
