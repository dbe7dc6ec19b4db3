"""Certificate sources as the watcher publishes them (facts, decoded once), for tests of the readers."""

from __future__ import annotations

from schemas.messages import CertSource
from services.domain.certs import to_wire
from services.domain.pem import parse_pem_certificate


def facts_source(key: str, *pems: bytes | str) -> CertSource:
    blocks = [p.decode() if isinstance(p, bytes) else p for p in pems]
    return CertSource(key, certs=[to_wire(parse_pem_certificate(block)) for block in blocks])
