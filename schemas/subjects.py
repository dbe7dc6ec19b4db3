"""Subjects on the bus.

Every subject carries the namespace as its own token, right after the kind, so that consumers can filter,
order and shard by namespace. Kubernetes names are DNS subdomains (lower-case alphanumerics, '-' and
'.', never two dots in a row), so an object name may span several tokens but is always a valid subject
tail; namespaces are DNS labels and never contain a dot.
"""

from __future__ import annotations

PREFIX = "certcheck.v1"

OBJECTS_ALL = f"{PREFIX}.objects.>"
RESULTS_ALL = f"{PREFIX}.results.>"
CLEANUP_ALL = f"{PREFIX}.cleanup.>"
SCHEDULE_ALL = f"{PREFIX}.schedule.>"
DUE_ALL = f"{PREFIX}.due.>"
DEADLETTER_ALL = f"{PREFIX}.deadletter.>"
KUBE_EVENTS_ALL = f"{PREFIX}.kubeevents.>"

KIND_CERTCHECK = "certcheck"
KIND_SECRET = "secret"
KIND_CONFIGMAP = "configmap"


def object_subject(kind: str, namespace: str, name: str) -> str:
    """Last-value subject of one observed Kubernetes object (CertCheck, Secret or ConfigMap)."""
    return f"{PREFIX}.objects.{kind}.{namespace}.{name}"


def result_subject(namespace: str, certcheck: str) -> str:
    """Last-value subject of a CertCheck's evaluation result."""
    return f"{PREFIX}.results.{namespace}.{certcheck}"


def cleanup_subject(namespace: str, secret: str) -> str:
    """Last-value subject telling the recorder to remove certcheck's annotations from a Secret."""
    return f"{PREFIX}.cleanup.{namespace}.{secret}"


def schedule_subject(namespace: str, certcheck: str) -> str:
    """Subject holding a CertCheck's single pending schedule (replaced at every evaluation)."""
    return f"{PREFIX}.schedule.{namespace}.{certcheck}"


def due_subject(namespace: str, certcheck: str) -> str:
    """Subject the server writes to when a CertCheck's schedule comes due."""
    return f"{PREFIX}.due.{namespace}.{certcheck}"


def kube_event_subject(namespace: str, dedup_key: str) -> str:
    """A Kubernetes Event to write: its namespace, and the key that names it (hex, one token)."""
    return f"{PREFIX}.kubeevents.{namespace}.{dedup_key}"


def deadletter_subject(original: str) -> str:
    """Where a message that cannot be processed goes: its original subject, under deadletter."""
    return f"{PREFIX}.deadletter.{original.removeprefix(PREFIX + '.')}"


def split_object_subject(subject: str) -> tuple[str, str, str]:
    """(kind, namespace, name) of an object subject."""
    parts = subject.split(".", 5)
    if len(parts) != 6 or f"{parts[0]}.{parts[1]}" != PREFIX or parts[2] != "objects":
        raise ValueError(f"not an object subject: {subject!r}")
    return parts[3], parts[4], parts[5]


def split_namespaced_subject(subject: str) -> tuple[str, str]:
    """(namespace, name) of a results/cleanup/schedule/due subject."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != PREFIX:
        raise ValueError(f"not a certcheck subject: {subject!r}")
    return parts[3], parts[4]
