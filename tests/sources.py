"""Certificate sources as the watcher publishes them (facts, decoded once), for tests of the readers."""

from __future__ import annotations

from typing import Any

from schemas.messages import CertCheckObserved, CertSource, LabelSelector, SecretObserved
from services.domain.certs import to_wire
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
