"""Certificate sources as the watcher publishes them (facts, decoded once), for tests of the readers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.messages import (
    CertCheckObserved,
    CertCheckStatus,
    CertificateStatus,
    CertSource,
    Condition,
    EvaluationResult,
    LabelSelector,
    SecretObserved,
    State,
)
from services.domain.certs import to_wire
from services.domain.clusterchecks import share_name
from services.domain.pem import parse_pem_certificate


def facts_source(key: str, *pems: bytes | str) -> CertSource:
    blocks = [p.decode() if isinstance(p, bytes) else p for p in pems]
    return CertSource(key, certs=[to_wire(parse_pem_certificate(block)) for block in blocks])


def certcheck_observed(name: str = "check", threshold_days: int = 30, **fields: Any) -> CertCheckObserved:
    """A CertCheck in namespace ``ns`` selecting ``app=x``, as the watcher publishes it."""
    return CertCheckObserved(
        **{
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "resource_version": "1",
            "generation": 1,
            "threshold_days": threshold_days,
            "selector": LabelSelector(match_labels={"app": "x"}),
            **fields,
        }
    )


def tls_secret_observed(name: str, *sources: CertSource, **fields: Any) -> SecretObserved:
    """A TLS Secret in namespace ``ns`` labelled ``app=x``, as the watcher publishes it."""
    return SecretObserved(
        **{
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "resource_version": "2",
            "type": "kubernetes.io/tls",
            "labels": {"app": "x"},
            "sources": list(sources),
            **fields,
        }
    )


# --- a ClusterCertCheck's shares' results, as the evaluator publishes them ------------------------------

SHARE_NOW = datetime(2026, 12, 6, tzinfo=UTC)


def cond(type_: str, holds: bool, reason: str, message: str) -> Condition:
    return Condition(type_, "True" if holds else "False", reason, message, "2026-01-01T00:00:00Z", 1)


def share_entry(name: str, state: State, days: int | None) -> CertificateStatus:
    """A status entry of a certificate expiring ``days`` after SHARE_NOW (None: no date)."""
    moment = SHARE_NOW + timedelta(days=days) if days is not None else None
    not_after = moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
    return CertificateStatus(name=name, key="tls.crt", index=0, state=state, active=True, not_after=not_after)


def share_result(
    namespace: str, *certs: CertificateStatus, ready: bool = True, view_seq: int = 1, generation: int = 1
) -> EvaluationResult:
    """The result of ClusterCertCheck "fleet"'s (uid c1) share of ``namespace``, listing ``certs``."""
    expiring = [c for c in certs if c.state == State.EXPIRING_SOON]
    dated = sorted((c for c in certs if c.not_after), key=lambda c: c.not_after or "")
    status = CertCheckStatus(
        observed_generation=generation,
        target_secrets_count=len(certs),
        target_certs_count=len(certs),
        valid_count=sum(c.state == State.VALID for c in certs),
        expiring_soon_count=len(expiring),
        invalid_count=sum(c.state == State.INVALID for c in certs),
        earliest_not_after=dated[0].not_after if dated else None,
        earliest_certificate=f"{dated[0].name}/tls.crt[0]" if dated else None,
        certificates=list(certs),
        conditions=[
            cond("Ready", True, "Evaluated", "evaluated")
            if ready
            else cond("Ready", False, "InvalidSelector", "bad selector"),
            cond(
                "ExpiringSoon",
                bool(expiring),
                "CertificatesExpiringSoon" if expiring else "NoExpiringSoon",
                f"{len(expiring)} expiring" if expiring else "no certificate expiring",
            ),
        ],
        last_evaluation_time="2026-12-06T00:00:00Z",
    )
    return EvaluationResult(namespace, share_name("fleet"), "c1", generation, "now", view_seq, status, True)
