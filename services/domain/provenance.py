"""Is a message what its subject says it is? The subject is the trusted part of a message: NATS
permissions decide who may publish it, and it names the namespace (and the object). The body is not:
whoever holds a service's password could write anything into it. So every consumer checks, before it
acts, that the body speaks of the namespace and object its subject names, and the recorder that it
writes only certcheck's own annotations. Each function returns why a message is refused, or None.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import subjects
from schemas.annotations import PREFIX as ANNOTATION_PREFIX
from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckObserved,
    CertificateObserved,
    ClusterSourceObserved,
    ConfigMapObserved,
    Due,
    EvaluationResult,
    EventIntent,
    ObjectDeleted,
    ObjectEvent,
    ResultMessage,
    SecretObserved,
)
from services.domain.clusterchecks import cluster_check_of

_RESULTS = f"{subjects.PREFIX}.results."
_CLEANUP = f"{subjects.PREFIX}.cleanup."
_EVENTS = f"{subjects.PREFIX}.kubeevents."


def _namespace_and_name(subject: str, prefix: str) -> tuple[str, str] | None:
    """The namespace token and the name (the rest, dots included) after ``prefix``."""
    if not subject.startswith(prefix):
        return None
    namespace, _, name = subject.removeprefix(prefix).partition(".")
    return (namespace, name) if namespace and name else None


def _mismatch(what: str, body: tuple[str, str], subject: tuple[str, str]) -> str | None:
    if body == subject:
        return None
    return f"{what} {body[0]}/{body[1]} does not match its subject's {subject[0]}/{subject[1]}"


def _foreign_keys(annotations: Iterable[str]) -> list[str]:
    return sorted(key for key in annotations if not key.startswith(ANNOTATION_PREFIX))


def patch_refusal(patch: AnnotationPatch, namespace: str) -> str | None:
    """A patch may touch only certcheck's own annotations, on an object of the subject's namespace."""
    if patch.namespace != namespace:
        return f"an annotation patch for {patch.namespace}/{patch.name} in a result of namespace {namespace}"
    foreign = _foreign_keys(patch.annotations)
    if foreign:
        return (
            f"an annotation patch for {patch.namespace}/{patch.name} names keys outside "
            f"{ANNOTATION_PREFIX}: {', '.join(foreign)[:200]}"
        )
    return None


def result_refusal(subject: str, result: ResultMessage) -> str | None:
    """A result names the CertCheck of its subject (a cleanup, the Secret of its subject), and each of
    its annotation patches stays in that namespace and within certcheck's keys."""
    if isinstance(result, AnnotationCleanup):
        where = _namespace_and_name(subject, _CLEANUP)
        if where is None:
            return f"an annotation cleanup on subject {subject}"
        body = (result.patch.namespace, result.patch.name)
        return _mismatch("a cleanup of", body, where) or patch_refusal(result.patch, where[0])
    where = _namespace_and_name(subject, _RESULTS)
    if where is None:
        return f"a result on subject {subject}"
    refusal = _mismatch("a result for", (result.namespace, result.name), where)
    if refusal is None and isinstance(result, EvaluationResult):
        refusal = next(
            (why for patch in result.annotation_patches if (why := patch_refusal(patch, where[0]))), None
        )
    return refusal


def event_refusal(subject: str, intent: EventIntent) -> str | None:
    """An Event is written in the namespace its subject names."""
    where = _namespace_and_name(subject, _EVENTS)
    if where is None:
        return f"an Event on subject {subject}"
    if intent.namespace != where[0]:
        return f"an Event for namespace {intent.namespace} on a subject of namespace {where[0]}"
    return None


_OBJECT_KINDS: dict[type, str] = {
    SecretObserved: subjects.KIND_SECRET,
    ConfigMapObserved: subjects.KIND_CONFIGMAP,
    CertCheckObserved: subjects.KIND_CERTCHECK,
    CertificateObserved: subjects.KIND_CERTIFICATE,
}


def object_refusal(subject: str, event: ObjectEvent) -> str | None:
    """An observed object is the kind, namespace and name its subject names."""
    try:
        where = subjects.split_object_subject(subject)
    except ValueError:
        return f"an object on subject {subject}"
    if isinstance(event, ObjectDeleted | ClusterSourceObserved):
        kind = event.object_kind
    else:
        kind = _OBJECT_KINDS[type(event)]
    if kind != where.kind:
        return f"a {kind} on a {where.kind} subject"
    cluster_scoped = where.namespace == subjects.CLUSTER_NAMESPACE
    if (kind in subjects.CLUSTER_SOURCE_KINDS) != cluster_scoped and not (
        kind == subjects.KIND_CERTCHECK and cluster_check_of(where.name) is not None
    ):
        return f"a {kind} in namespace {where.namespace}"
    return _mismatch(f"a {kind}", (event.namespace, event.name), (where.namespace, where.name))


def due_refusal(subject: str, fired: Due) -> str | None:
    """A due evaluation names the CertCheck its subject (``due.<partition>.<namespace>.<name>``) names."""
    prefix = f"{subjects.PREFIX}.due."
    partition, _, rest = subject.removeprefix(prefix).partition(".")
    where = _namespace_and_name(f"{prefix}{rest}", prefix) if subject.startswith(prefix) else None
    if where is None or not partition.isdigit():
        return f"a due evaluation on subject {subject}"
    return _mismatch("a due evaluation of", (fired.namespace, fired.name), where)
