"""What names a Kubernetes Event certcheck writes, shared by the evaluator and the notifier."""

from __future__ import annotations

import hashlib

from schemas.messages import EventIntent

CERTCHECK_API_VERSION = "certcheck.dev/v1alpha1"


def dedup_key(*parts: str) -> str:
    """The key that names an Event: the same parts, the same Event (a repeat is a no-op)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def certcheck_warning(
    namespace: str, name: str, uid: str, reason: str, message: str, occurrence: str, *identity: str
) -> EventIntent:
    """A Warning Event on a CertCheck, named by its reason and what ``identity`` says the problem is."""
    return EventIntent(
        namespace=namespace,
        involved_api_version=CERTCHECK_API_VERSION,
        involved_kind="CertCheck",
        involved_name=name,
        involved_uid=uid,
        type="Warning",
        reason=reason,
        message=message,
        dedup_key=dedup_key(uid, reason, *identity),
        occurrence=occurrence,
    )


def secret_event_intent(
    namespace: str,
    name: str,
    uid: str,
    type_: str,
    reason: str,
    message: str,
    occurrence: str,
    *identity: str,
) -> EventIntent:
    """An Event on a Secret, named by its reason and what ``identity`` says the change is."""
    return EventIntent(
        namespace=namespace,
        involved_api_version="v1",
        involved_kind="Secret",
        involved_name=name,
        involved_uid=uid,
        type=type_,
        reason=reason,
        message=message,
        dedup_key=dedup_key(uid, reason, *identity),
        occurrence=occurrence,
    )
