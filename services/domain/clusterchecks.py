"""ClusterCertChecks in a pipeline partitioned by namespace. Pure: no I/O.

A ClusterCertCheck is cut into *shares*, one per namespace it selects, plus one in
subjects.CLUSTER_NAMESPACE for the cluster-scoped sources (and so that a ClusterCertCheck selecting no
namespace still gets a status). Each share travels, is evaluated, scheduled and recorded like a CertCheck
of its namespace named ``clustercertcheck/<name>``: no CertCheck can be named so (Kubernetes names hold no
'/'), and everything keyed by a namespace and a CertCheck name (subjects, schedules, claims, the view)
keeps working, in the namespace's own partition. The recorder merges the shares' results into the
ClusterCertCheck's status.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import subjects

SHARE_PREFIX = subjects.SHARE_PREFIX
KIND = "ClusterCertCheck"
PLURAL = "clustercertchecks"


def share_name(cluster_check: str) -> str:
    """The name a ClusterCertCheck's share of a namespace goes by."""
    return f"{SHARE_PREFIX}{cluster_check}"


def cluster_check_of(certcheck: str) -> str | None:
    """The ClusterCertCheck a share belongs to, or None for a CertCheck's name."""
    return certcheck.removeprefix(SHARE_PREFIX) if certcheck.startswith(SHARE_PREFIX) else None


@dataclass(frozen=True)
class ClusterSourceKind:
    """A kind of cluster-scoped object holding CA bundles."""

    token: str  # the subject's kind token, and what spec.sources names it by... see ``by_kind``
    kind: str  # the Kubernetes kind, as status entries and Events name it
    api_version: str
    plural: str


CLUSTER_SOURCES = (
    ClusterSourceKind(
        subjects.KIND_VALIDATING_WEBHOOK,
        "ValidatingWebhookConfiguration",
        "admissionregistration.k8s.io/v1",
        "validatingwebhookconfigurations",
    ),
    ClusterSourceKind(
        subjects.KIND_MUTATING_WEBHOOK,
        "MutatingWebhookConfiguration",
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
    ),
    ClusterSourceKind(subjects.KIND_APISERVICE, "APIService", "apiregistration.k8s.io/v1", "apiservices"),
    ClusterSourceKind(
        subjects.KIND_CRD, "CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions"
    ),
)
BY_KIND = {source.kind: source for source in CLUSTER_SOURCES}
BY_TOKEN = {source.token: source for source in CLUSTER_SOURCES}
CLUSTER_SCOPED_KINDS = frozenset({KIND, *BY_KIND})


def is_cluster_scoped(kind: str) -> bool:
    """Whether objects of this Kubernetes kind have no namespace (their Events go to ``default``)."""
    return kind in CLUSTER_SCOPED_KINDS
