"""A ClusterCertCheck's status, merged from the results of its shares (one per namespace it selects,
and one for the cluster-scoped sources: see services/domain/clusterchecks.py). Pure.

The recorder keeps each share's last result, cut down (``Share``), in a key-value bucket shared by its
replicas, and writes the merge of all of them: totals, the most urgent namespaces and certificates
(bounded), and conditions that hold in any namespace (Ready: in every one).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from schemas.messages import (
    CertCheckStatus,
    CertificateStatus,
    ClusterCertCheckStatus,
    Condition,
    EvaluationResult,
    NamespaceSummary,
    State,
)
from schemas.subjects import CLUSTER_NAMESPACE
from services.domain.conditions import condition
from services.domain.states import URGENCY
from services.domain.times import rfc3339

SHARE_CERTIFICATES = 10  # per share, its most urgent certificates are kept for the merged list
NAMESPACES_CAP = 100
CERTIFICATES_CAP = 100
_MESSAGE_CAP = 1000
_LATEST = "~"  # sorts after every RFC 3339 time: no notAfter comes last


class Share(msgspec.Struct, frozen=True):
    """What the recorder keeps of a share's last result."""

    uid: str  # the ClusterCertCheck's
    view_seq: int
    namespace: str
    status: CertCheckStatus  # without its times, and only its SHARE_CERTIFICATES most urgent entries


def share_of(result: EvaluationResult) -> Share:
    """The part of a share's result its ClusterCertCheck's status merges."""
    status = result.status
    located = None if result.namespace == CLUSTER_NAMESPACE else result.namespace
    kept = msgspec.structs.replace(
        status,
        certificates=[
            msgspec.structs.replace(c, namespace=located) for c in status.certificates[:SHARE_CERTIFICATES]
        ],
        certificates_omitted=0,
        conditions=[msgspec.structs.replace(c, last_transition_time="") for c in status.conditions],
        last_evaluation_time=None,
        notification_failures=None,
    )
    return Share(result.uid, result.view_seq, result.namespace, kept)


def _where(share: Share) -> str:
    return "cluster-scoped sources" if share.namespace == CLUSTER_NAMESPACE else share.namespace


def _namespace_summary(share: Share) -> NamespaceSummary:
    s = share.status
    return NamespaceSummary(
        namespace=share.namespace,
        target_certs_count=s.target_certs_count,
        expiring_soon_count=s.expiring_soon_count,
        expired_count=s.expired_count,
        invalid_count=s.invalid_count,
        renewal_overdue_count=s.renewal_overdue_count,
        weak_count=s.weak_count,
        broken_chain_count=s.broken_chain_count,
        earliest_not_after=s.earliest_not_after,
    )


def _namespace_urgency(summary: NamespaceSummary) -> tuple[int, int, int, int, str, str]:
    return (
        -summary.expired_count,
        -summary.expiring_soon_count,
        -summary.invalid_count,
        -summary.renewal_overdue_count,
        summary.earliest_not_after or _LATEST,
        summary.namespace,
    )


def _certificate_urgency(entry: CertificateStatus) -> tuple[int, str, str, str, str, str, int]:
    return (
        URGENCY[State(entry.state)],
        entry.not_after or _LATEST,
        entry.namespace or "",
        entry.kind,
        entry.name,
        entry.key,
        entry.index,
    )


def _merged_condition(
    type_: str, shares: Sequence[Share], generation: int, current: dict[str, Condition], now: datetime
) -> Condition | None:
    held = [(share, c) for share in shares for c in share.status.conditions if c.type == type_]
    if not held:
        return None
    # Ready holds when it holds everywhere; every other condition when it holds anywhere.
    bad = "False" if type_ == "Ready" else "True"
    telling = [(share, c) for share, c in held if c.status == bad]
    if telling:
        reason = telling[0][1].reason
        message = "; ".join(f"{_where(share)}: {c.message}" for share, c in telling)
        holds = bad == "True"
    else:
        reason, holds = held[0][1].reason, bad != "True"
        message = held[0][1].message
        if type_ == "Ready":
            message = _evaluated(shares)
    return condition(type_, holds, reason, message[:_MESSAGE_CAP], generation, current, now)


def _evaluated(shares: Sequence[Share]) -> str:
    certificates = sum(share.status.target_certs_count for share in shares)
    namespaces = sum(1 for share in shares if share.namespace != CLUSTER_NAMESPACE)
    cluster = any(s.namespace == CLUSTER_NAMESPACE and s.status.target_secrets_count for s in shares)
    return f"{certificates} certificates evaluated in {namespaces} namespaces" + (
        " and cluster-scoped sources" if cluster else ""
    )


def _conditions(
    shares: Sequence[Share], generation: int, current: ClusterCertCheckStatus | None, now: datetime
) -> list[Condition]:
    types = list(dict.fromkeys(c.type for share in shares for c in share.status.conditions))
    held = {c.type: c for c in current.conditions} if current is not None else {}
    merged = (_merged_condition(type_, shares, generation, held, now) for type_ in types)
    return [c for c in merged if c is not None]


def merged_status(
    shares: Sequence[Share],
    generation: int,
    current: ClusterCertCheckStatus | None,
    revision: int,
    now: datetime,
) -> ClusterCertCheckStatus:
    """The status of a ClusterCertCheck whose shares' last results are ``shares`` (as of ``revision``
    of the bucket holding them); ``current``: its status as written, whose conditions keep their
    transition times while they hold."""
    shares = sorted(shares, key=lambda share: share.namespace)
    statuses = [share.status for share in shares]
    namespaces = sorted(
        (_namespace_summary(s) for s in shares if s.namespace != CLUSTER_NAMESPACE), key=_namespace_urgency
    )
    entries = sorted((c for s in statuses for c in s.certificates), key=_certificate_urgency)
    total_certs = sum(s.target_certs_count for s in statuses)
    earliest = min(
        ((s.status.earliest_not_after, s) for s in shares if s.status.earliest_not_after),
        key=lambda pair: pair[0],
        default=None,
    )
    observed = min((s.observed_generation for s in statuses), default=generation)
    shown = entries[:CERTIFICATES_CAP]
    return ClusterCertCheckStatus(
        observed_generation=observed,
        namespaces_count=len(namespaces),
        target_secrets_count=sum(s.target_secrets_count for s in statuses),
        target_certs_count=total_certs,
        valid_count=sum(s.valid_count for s in statuses),
        expiring_soon_count=sum(s.expiring_soon_count for s in statuses),
        expired_count=sum(s.expired_count for s in statuses),
        not_yet_valid_count=sum(s.not_yet_valid_count for s in statuses),
        invalid_count=sum(s.invalid_count for s in statuses),
        renewal_overdue_count=sum(s.renewal_overdue_count for s in statuses),
        weak_count=sum(s.weak_count for s in statuses),
        broken_chain_count=sum(s.broken_chain_count for s in statuses),
        earliest_not_after=earliest[0] if earliest else None,
        earliest_certificate=_earliest_label(earliest[1]) if earliest else None,
        namespaces=namespaces[:NAMESPACES_CAP],
        namespaces_omitted=max(0, len(namespaces) - NAMESPACES_CAP),
        certificates=shown,
        certificates_omitted=total_certs - len(shown),
        conditions=_conditions(shares, observed, current, now),
        last_evaluation_time=rfc3339(now),
        merged_revision=revision,
    )


def _earliest_label(share: Share) -> str | None:
    label = share.status.earliest_certificate
    if label is None or share.namespace == CLUSTER_NAMESPACE:
        return label
    return f"{share.namespace}/{label}"


def same_status(a: ClusterCertCheckStatus, b: ClusterCertCheckStatus) -> bool:
    """Equal but for when they were written and what revision they merge (nothing to write then)."""
    blank = {"last_evaluation_time": None, "merged_revision": 0}
    return msgspec.structs.replace(a, **blank) == msgspec.structs.replace(b, **blank)
