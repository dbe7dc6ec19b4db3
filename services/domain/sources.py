"""The certificates under one data key, as a message carries them (facts, each with what is wrong with
its link in the key's chain): read by the watcher from a Secret or ConfigMap, and by ``kubectl
certcheck check`` from a file, with the same readers. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from schemas.messages import Certificate, CertSource
from services.domain.certs import to_wire
from services.domain.chains import chain_problems
from services.domain.decode import find_certificates
from services.domain.pem import parse_pem_certificate


def with_problem(cert: Certificate, problem: str | None) -> Certificate:
    if problem is None or cert.error is not None:
        return cert
    return msgspec.structs.replace(cert, chain_problem=problem)


def chained(key: str, pems: tuple[str, ...]) -> list[Certificate]:
    """Each certificate's facts, with what is wrong with its link in the key's chain."""
    certs = [to_wire(parse_pem_certificate(block)) for block in pems]
    return [
        with_problem(cert, problem) for cert, problem in zip(certs, chain_problems(key, pems), strict=True)
    ]


def read_value(
    key: str, value: bytes, decoded: Mapping[str, bytes], first_passwords: tuple[bytes, ...] = ()
) -> tuple[CertSource, tuple[str, ...]]:
    """The source of one key's decoded value, and its certificates as PEM (for checks across keys)."""
    found = find_certificates(key, value, decoded, first_passwords)
    if not found.pem:
        return CertSource(key, error=found.error), ()
    certs = chained(key, found.pem)
    if found.origins:
        certs = [msgspec.structs.replace(c, origin=o) for c, o in zip(certs, found.origins, strict=True)]
    return CertSource(key, certs=certs), found.pem
