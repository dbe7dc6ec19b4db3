"""What names a Kubernetes Event certcheck writes, shared by the evaluator and the notifier."""

from __future__ import annotations

import hashlib

from schemas.messages import EventIntent
from schemas.subjects import CLUSTER_NAMESPACE
from services.domain.clusterchecks import KIND, cluster_check_of

CERTCHECK_API_VERSION = "certcheck.dev/v1alpha1"


def dedup_key(*parts: str) -> str:
    """The key that names an Event: the same parts, the same Event (a repeat is a no-op)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def certcheck_event(
    namespace: str,
    name: str,
    uid: str,
    type_: str,
    reason: str,
    message: str,
    occurrence: str,
    *identity: str,
) -> EventIntent:
    """An Event on a CertCheck, named by its reason and what ``identity`` says the change is. A
    ClusterCertCheck's share of a namespace puts it on the ClusterCertCheck, saying which namespace."""
    cluster_check = cluster_check_of(name)
    if cluster_check is None:
        kind, involved, text, named_by = "CertCheck", name, message, identity
    else:
        where = "cluster-scoped sources" if namespace == CLUSTER_NAMESPACE else f"namespace {namespace}"
        kind, involved, text, named_by = KIND, cluster_check, f"{where}: {message}", (namespace, *identity)
    return EventIntent(
        namespace=namespace,
        involved_api_version=CERTCHECK_API_VERSION,
        involved_kind=kind,
        involved_name=involved,
        involved_uid=uid,
        type=type_,
        reason=reason,
        message=text,
        dedup_key=dedup_key(uid, reason, *named_by),
        occurrence=occurrence,
    )


def certcheck_warning(
    namespace: str, name: str, uid: str, reason: str, message: str, occurrence: str, *identity: str
) -> EventIntent:
    """A Warning Event on a CertCheck, named by its reason and what ``identity`` says the problem is."""
    return certcheck_event(namespace, name, uid, "Warning", reason, message, occurrence, *identity)


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
