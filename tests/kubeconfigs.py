"""Kubeconfigs as clients and Cluster API write them, for the tests of reading them from Secrets."""

from __future__ import annotations

import base64
from typing import Any


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def kubeconfig(
    clusters: dict[str, bytes],
    users: dict[str, dict[str, Any]],
    contexts: dict[str, tuple[str, str]],
) -> dict[str, Any]:
    """``clusters``: name -> CA PEM; ``users``: name -> the user's fields; ``contexts``: name -> (cluster,
    user)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {"server": f"https://{name}:6443", "certificate-authority-data": b64(ca)},
            }
            for name, ca in clusters.items()
        ],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [
            {"name": name, "context": {"cluster": cluster, "user": user}}
            for name, (cluster, user) in contexts.items()
        ],
    }


def client_certificate(cert: bytes, key: bytes) -> dict[str, Any]:
    return {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
