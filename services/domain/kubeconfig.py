"""Kubeconfigs stored in Secrets (Cluster API's ``<cluster>-kubeconfig``, key ``value``; any key a
CertCheck names): the client certificates and the CA certificates inside, each named by where it is
(user, cluster, and the contexts that use them). Pure: no I/O.

Only ``client-certificate-data`` and ``certificate-authority-data`` are read; keys, tokens and
passwords are never returned. Certificates a kubeconfig names by file path are not on the cluster to
read and are skipped.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

MARKERS = (b"client-certificate-data", b"certificate-authority-data")
MAX_ORIGIN = 200
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KubeconfigError(ValueError):
    pass


def looks_like_kubeconfig(value: bytes) -> bool:
    return any(marker in value for marker in MARKERS)


@dataclass(frozen=True)
class Embedded:
    origin: str  # e.g. "user admin (context admin@prod)"
    pem: str  # one CERTIFICATE block


def _named(items: Any, inner: str) -> list[tuple[str, dict[str, Any]]]:
    """``[{name: n, <inner>: {...}}]`` as (name, inner mapping), skipping what has another shape."""
    if not isinstance(items, list):
        return []
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(inner), dict):
            found.append((str(item.get("name", ""))[:MAX_ORIGIN], item[inner]))
    return found


def _blocks(encoded: Any, origin: str) -> list[str]:
    if not isinstance(encoded, str):
        raise KubeconfigError(f"{origin}: the certificate data is not a string")
    try:
        text = base64.b64decode(encoded, validate=False).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise KubeconfigError(f"{origin}: the certificate data is not base64 PEM") from exc
    blocks = _PEM_CERT.findall(text)
    if not blocks:
        raise KubeconfigError(f"{origin}: the certificate data holds no PEM certificate")
    return [block + "\n" for block in blocks]


def _used_by(contexts: list[tuple[str, dict[str, Any]]], field: str, name: str) -> str:
    using = [ctx for ctx, body in contexts if str(body.get(field, "")) == name]
    if not using:
        return ""
    more = f" and {len(using) - 1} more" if len(using) > 1 else ""
    label = "context" if len(using) == 1 else "contexts"
    return f" ({label} {using[0]}{more})"


def embedded_certificates(value: bytes) -> Iterator[Embedded]:
    """Every certificate a kubeconfig holds: each user's client certificate, then each cluster's CA."""
    try:
        config = yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"not a readable kubeconfig: {type(exc).__name__}") from exc
    if not isinstance(config, dict):
        raise KubeconfigError("not a kubeconfig: not a mapping")
    contexts = _named(config.get("contexts"), "context")
    for name, user in _named(config.get("users"), "user"):
        if "client-certificate-data" in user:
            origin = f"user {name}{_used_by(contexts, 'user', name)}"[:MAX_ORIGIN]
            for block in _blocks(user["client-certificate-data"], origin):
                yield Embedded(origin, block)
    for name, cluster in _named(config.get("clusters"), "cluster"):
        if "certificate-authority-data" in cluster:
            origin = f"cluster {name} CA{_used_by(contexts, 'cluster', name)}"[:MAX_ORIGIN]
            for block in _blocks(cluster["certificate-authority-data"], origin):
                yield Embedded(origin, block)
