"""Reading notification credentials from Secrets of the CertCheck's namespace: only Secrets labelled
certcheck.dev/credential=true, on demand, cached briefly, never logged."""

from __future__ import annotations

import base64
import time

import msgspec
from kubernetes import client

from schemas.annotations import is_credential, not_a_credential
from services.common.kube import request, secret_path
from services.notifier.channels import DeliveryError


class _Meta(msgspec.Struct):
    labels: dict[str, str] | None = None


class _Secret(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    data: dict[str, str] | None = None


class SecretReader:
    def __init__(self, api: client.ApiClient, ttl_seconds: float = 30.0) -> None:
        self.api = api
        self.ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, dict[str, bytes]]] = {}

    def values(self, namespace: str, name: str) -> dict[str, bytes]:
        cached = self._cache.get((namespace, name))
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        status, data = request(self.api, "GET", secret_path(namespace, name))
        if status == 404:
            raise DeliveryError(f"Secret {namespace}/{name} not found", True)
        if status == 403:
            raise DeliveryError(f"not allowed to read Secret {namespace}/{name}", True)
        if status >= 300:
            raise DeliveryError(f"reading Secret {namespace}/{name} failed: HTTP {status}", True)
        try:
            secret = msgspec.json.decode(data, type=_Secret)
        except msgspec.DecodeError:
            raise DeliveryError(f"reading Secret {namespace}/{name} failed: not a Secret", True) from None
        if not is_credential(secret.metadata.labels):
            # Not cached: labelling the Secret makes the next attempt use it. Not retried: only a
            # person can fix it, and the CertCheck's condition tells them how.
            raise DeliveryError(not_a_credential(namespace, name), False)
        values = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        self._cache[(namespace, name)] = (time.monotonic(), values)
        return values

    def value(self, namespace: str, name: str, key: str) -> bytes:
        values = self.values(namespace, name)
        if key not in values:
            raise DeliveryError(f"key {key} not found in Secret {namespace}/{name}", True)
        return values[key]
