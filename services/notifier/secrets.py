"""Reading notification credentials from Secrets of the CertCheck's namespace: only Secrets labelled
certcheck.dev/credential=true, on demand, cached briefly, never logged."""

from __future__ import annotations

import base64
import time

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from schemas.annotations import is_credential, not_a_credential
from services.notifier.channels import DeliveryError


class SecretReader:
    def __init__(self, core: client.CoreV1Api, ttl_seconds: float = 30.0) -> None:
        self.core = core
        self.ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, dict[str, bytes]]] = {}

    def values(self, namespace: str, name: str) -> dict[str, bytes]:
        cached = self._cache.get((namespace, name))
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise DeliveryError(f"Secret {namespace}/{name} not found", True) from None
            if exc.status == 403:
                raise DeliveryError(f"not allowed to read Secret {namespace}/{name}", True) from None
            raise DeliveryError(
                f"reading Secret {namespace}/{name} failed: HTTP {exc.status}", True
            ) from None
        if not is_credential(secret.metadata.labels if secret.metadata else None):
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
