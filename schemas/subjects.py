"""Subjects on the bus.

Every subject carries the namespace as its own token, so that consumers can filter, order and shard by
namespace. Kubernetes names are DNS subdomains (lower-case alphanumerics, '-' and '.', never two dots
in a row), so an object name may span several tokens but is always a valid subject tail; namespaces are
DNS labels and never contain a dot.

The subjects an evaluator replica works from (objects, schedules, due re-evaluations) also carry the
namespace's *partition*, right after their kind: a replica that owns a partition filters on that token
alone (one filter per partition, as nats-server serves best). A namespace's partition is a stable hash
of its name modulo a count fixed at install (see ``partition_of``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

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
KIND_CERTIFICATE = "certificate"  # a cert-manager Certificate: when it renews its Secret's certificate
# Cluster-scoped objects holding CA bundles, which only a ClusterCertCheck reads (``spec.sources``).
KIND_VALIDATING_WEBHOOK = "validatingwebhook"
KIND_MUTATING_WEBHOOK = "mutatingwebhook"
KIND_APISERVICE = "apiservice"
KIND_CRD = "crd"
CLUSTER_SOURCE_KINDS = (KIND_VALIDATING_WEBHOOK, KIND_MUTATING_WEBHOOK, KIND_APISERVICE, KIND_CRD)
OBJECT_KINDS = (KIND_CERTCHECK, KIND_SECRET, KIND_CONFIGMAP, KIND_CERTIFICATE, *CLUSTER_SOURCE_KINDS)

# The namespace token of cluster-scoped objects: never a namespace's name (namespaces are DNS labels,
# without '_'), so they sit in a partition of their own like the objects of any one namespace.
CLUSTER_NAMESPACE = "_cluster"
# A ClusterCertCheck's share of a namespace travels as a CertCheck of that namespace named with this prefix
# (services/domain/clusterchecks.py); no CertCheck's name has a '/'.
SHARE_PREFIX = "clustercertcheck/"


_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


@functools.lru_cache(maxsize=8192)  # per published object: namespaces are few, the hash a Python loop
def partition_of(namespace: str, partitions: int) -> int:
    """The partition of a namespace: FNV-1a (32 bits) of its name, modulo the count. The same hash as
    nats-server's ``{{partition(count, <namespace token>)}}`` subject mapping, so a server-side mapping
    of another subject on the namespace token agrees with certcheck's."""
    digest = _FNV32_OFFSET
    for byte in namespace.encode():
        digest = ((digest ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return digest % partitions


def object_subject(partition: int, kind: str, namespace: str, name: str) -> str:
    """Last-value subject of one observed Kubernetes object (a CertCheck, a ClusterCertCheck's share of
    a namespace, a Secret, a ConfigMap or a cluster-scoped object holding CA bundles)."""
    return f"{PREFIX}.objects.{partition}.{kind}.{namespace}.{name}"


def objects_of(partition: int) -> str:
    """Every object of one partition: what the replica owning it follows and works from."""
    return f"{PREFIX}.objects.{partition}.>"


def result_subject(namespace: str, certcheck: str) -> str:
    """Last-value subject of a CertCheck's evaluation result."""
    return f"{PREFIX}.results.{namespace}.{certcheck}"


def applied_mark(subject: str) -> str:
    """The recorder's applied-mark key of a results subject (``results.<ns>.<name>``, ``cleanup.…``)."""
    return subject.removeprefix(PREFIX + ".")


def cleanup_subject(namespace: str, secret: str) -> str:
    """Last-value subject telling the recorder to remove certcheck's annotations from a Secret."""
    return f"{PREFIX}.cleanup.{namespace}.{secret}"


def schedule_subject(partition: int, namespace: str, certcheck: str) -> str:
    """Subject holding a CertCheck's single pending schedule (replaced at every evaluation)."""
    return f"{PREFIX}.schedule.{partition}.{namespace}.{certcheck}"


def due_subject(partition: int, namespace: str, certcheck: str) -> str:
    """Subject the server writes to when a CertCheck's schedule comes due."""
    return f"{PREFIX}.due.{partition}.{namespace}.{certcheck}"


def due_of(partition: int) -> str:
    """Every due re-evaluation of one partition."""
    return f"{PREFIX}.due.{partition}.>"


def kube_event_subject(namespace: str, dedup_key: str) -> str:
    """A Kubernetes Event to write: its namespace, and the key that names it (hex, one token)."""
    return f"{PREFIX}.kubeevents.{namespace}.{dedup_key}"


def deadletter_subject(original: str) -> str:
    """Where a message that cannot be processed goes: its original subject, under deadletter."""
    return f"{PREFIX}.deadletter.{original.removeprefix(PREFIX + '.')}"


class ObjectSubject(NamedTuple):
    partition: int
    kind: str
    namespace: str
    name: str


def split_object_subject(subject: str) -> ObjectSubject:
    """The parts of an object subject (ValueError for anything else, an older layout included)."""
    parts = subject.split(".", 6)
    if (
        len(parts) != 7
        or f"{parts[0]}.{parts[1]}" != PREFIX
        or parts[2] != "objects"
        or not parts[3].isdigit()
        or parts[4] not in OBJECT_KINDS
    ):
        raise ValueError(f"not an object subject: {subject!r}")
    return ObjectSubject(int(parts[3]), parts[4], parts[5], parts[6])
