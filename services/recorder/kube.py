"""The recorder's Kubernetes adapter: idempotent writes, each a single request."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from schemas.messages import AnnotationPatch, CertCheckStatus, EventIntent, NotificationFailure
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, MERGE_PATCH

log = logging.getLogger(__name__)

COMPONENT = "certcheck-recorder"
OCCURRENCE = "certcheck.dev/occurrence"
writes = Counter("certcheck_kubernetes_writes_total", "Writes to the Kubernetes API", ["kind", "outcome"])


class Gone(Exception):
    """The object to write to no longer exists (or is a different object by now)."""


def _is_gone(exc: ApiException) -> bool:
    # 404: deleted. 409 on a patch carrying metadata.uid: the name now belongs to a new object.
    return exc.status in (404, 409)


class KubeWriter:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def patch_status(self, namespace: str, name: str, uid: str, status: CertCheckStatus) -> None:
        # Every field is sent, None as null, so a merge patch also removes what no longer applies.
        fields = msgspec.to_builtins(status)
        fields.pop("notificationFailures", None)  # the notifier's field: never overwritten from here
        body = {"metadata": {"uid": uid}, "status": fields}
        try:
            self.custom.patch_namespaced_custom_object_status(
                CERTCHECK_GROUP,
                CERTCHECK_VERSION,
                namespace,
                CERTCHECK_PLURAL,
                name,
                body,
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            writes.labels("status", "gone" if _is_gone(exc) else "error").inc()
            if _is_gone(exc):
                raise Gone(f"CertCheck {namespace}/{name}") from exc
            raise
        writes.labels("status", "ok").inc()

    def patch_notification_failures(
        self, namespace: str, name: str, uid: str, failures: list[NotificationFailure]
    ) -> None:
        """The notifier's own status field (the recorder never sends it, so neither overwrites the other)."""
        value = [msgspec.to_builtins(f) for f in failures] or None
        body = {"metadata": {"uid": uid}, "status": {"notificationFailures": value}}
        try:
            self.custom.patch_namespaced_custom_object_status(
                CERTCHECK_GROUP,
                CERTCHECK_VERSION,
                namespace,
                CERTCHECK_PLURAL,
                name,
                body,
                _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if _is_gone(exc):
                raise Gone(f"CertCheck {namespace}/{name}") from exc
            raise

    def patch_annotations(self, patch: AnnotationPatch) -> None:
        body = {"metadata": {"uid": patch.uid, "annotations": patch.annotations}}
        try:
            self.core.patch_namespaced_secret(patch.name, patch.namespace, body, _content_type=MERGE_PATCH)
        except ApiException as exc:
            writes.labels("annotations", "gone" if _is_gone(exc) else "error").inc()
            if _is_gone(exc):
                raise Gone(f"Secret {patch.namespace}/{patch.name}") from exc
            raise
        writes.labels("annotations", "ok").inc()

    def emit_event(self, intent: EventIntent) -> str:
        """Create the Event named by its dedup key. If it exists, a new occurrence of the same change
        increments its count (aggregation); the same occurrence again is a no-op.
        Returns "created", "aggregated" or "duplicate"."""
        now = datetime.now(UTC)
        name = f"{intent.involved_name[:200]}.{intent.dedup_key}"
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=name, namespace=intent.namespace, annotations={OCCURRENCE: intent.occurrence}
            ),
            involved_object=client.V1ObjectReference(
                api_version=intent.involved_api_version,
                kind=intent.involved_kind,
                name=intent.involved_name,
                namespace=intent.namespace,
                uid=intent.involved_uid,
            ),
            reason=intent.reason,
            message=intent.message[:1024],
            type=intent.type,
            count=1,
            first_timestamp=now,
            last_timestamp=now,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component="certcheck.dev/recorder",
            reporting_instance=COMPONENT,
        )
        try:
            self.core.create_namespaced_event(intent.namespace, event)
        except ApiException as exc:
            if exc.status == 409:
                return self._aggregate(name, intent, now)
            if exc.status == 404:  # the namespace is being deleted
                writes.labels("event", "gone").inc()
                return "duplicate"
            writes.labels("event", "error").inc()
            raise
        writes.labels("event", "ok").inc()
        return "created"

    def _aggregate(self, name: str, intent: EventIntent, now: datetime) -> str:
        existing = self.core.read_namespaced_event(name, intent.namespace)
        annotations = existing.metadata.annotations or {}
        if annotations.get(OCCURRENCE) == intent.occurrence:
            writes.labels("event", "duplicate").inc()
            return "duplicate"
        patch = {
            "metadata": {
                "annotations": {OCCURRENCE: intent.occurrence},
                "resourceVersion": existing.metadata.resource_version,
            },
            "count": (existing.count or 1) + 1,
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message": intent.message[:1024],
        }
        # The resourceVersion makes this a compare-and-set: two replicas never both count one occurrence.
        self.core.patch_namespaced_event(name, intent.namespace, patch, _content_type=MERGE_PATCH)
        writes.labels("event", "aggregated").inc()
        return "aggregated"
