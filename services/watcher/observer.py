"""Observing Secrets: the keystore passwords they point at are read here (Kubernetes I/O), and a
keystore Secret is observed again when the Secret holding its password changes."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from schemas import subjects
from schemas.annotations import is_credential, not_a_credential
from schemas.messages import SecretObserved
from services.common.kube import api_error, request, secret_path
from services.common.settings import Settings
from services.watcher.extract import RawSecret, decode_small_values, secret_observed
from services.watcher.listwatch import RetryLater
from services.watcher.memo import SecretMemo
from services.watcher.passwords import NotACredential, PasswordIndex, password_ref
from services.watcher.publisher import Upsert

log = logging.getLogger("certcheck.watcher")


def secret_scopes(settings: Settings) -> dict[str, str | None]:
    """One watch per Secret type, each filtered by the API server: {scope: type or None for all types}."""
    types = [t.strip() for t in settings.secret_types.split(",") if t.strip()]
    if not types or "*" in types:
        return {f"{subjects.KIND_SECRET}.all": None}
    return {f"{subjects.KIND_SECRET}.{t}": t for t in dict.fromkeys(types)}


_raw_secret = msgspec.json.Decoder(RawSecret)


def read_raw_secret(api: client.ApiClient, namespace: str, name: str) -> RawSecret | None:
    status, data = request(api, "GET", secret_path(namespace, name))
    if status == 404:
        return None
    if status >= 300:
        raise api_error(status, data)
    return _raw_secret.decode(data)


def is_transient(exc: Exception) -> bool:
    """A failure that goes away by itself: the API server throttling, failing or out of reach."""
    if isinstance(exc, ApiException):
        return exc.status in (429, 500, 502, 503, 504) or not exc.status
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class SecretObserver:
    """Observes Secrets, reading the keystore passwords they point at, and re-reads a keystore Secret
    when its password Secret changes. Shared by every Secret watch."""

    def __init__(self, settings: Settings, api: client.ApiClient, put: Any) -> None:
        self._api = api
        self._put = put
        self._scopes = secret_scopes(settings)

        def read_data(namespace: str, name: str) -> dict[str, bytes] | None:
            try:
                secret = read_raw_secret(api, namespace, name)
            except Exception as exc:
                if is_transient(exc):  # the keystore is read again, not reported Invalid
                    raise RetryLater(f"reading Secret {namespace}/{name}: {exc}") from exc
                raise
            if secret is None:
                return None
            if not is_credential(secret.metadata.labels):
                raise NotACredential(not_a_credential(namespace, name))
            return decode_small_values(secret.data or {})

        self.passwords = PasswordIndex(read_data)
        self.memo = SecretMemo()

    def observe(self, secret: RawSecret) -> SecretObserved:
        meta = secret.metadata
        referenced = self.passwords.resolve(meta.namespace, meta.name, password_ref(meta.annotations))
        return secret_observed(secret, referenced, self.memo.content(secret, referenced))

    def listed(self, scope: str, keys: set[tuple[str, str]]) -> None:
        self.memo.listed(self._scopes[scope], keys)

    def after(self, secret: RawSecret, deleted: bool) -> None:
        """Once a Secret changed or went: re-read the keystores whose password it holds."""
        namespace = secret.metadata.namespace
        if deleted:
            self.passwords.forget(namespace, secret.metadata.name)
            self.memo.forget(namespace, secret.metadata.name)
        for holder in self.passwords.keystores_using(namespace, secret.metadata.name):
            try:
                keystore = read_raw_secret(self._api, namespace, holder)
            except Exception as exc:
                log.warning("could not re-read keystore Secret %s/%s: %s", namespace, holder, exc)
                continue
            scope = self._scope_of(keystore.type) if keystore else None
            if keystore is not None and scope is not None:
                self._put(Upsert(subjects.KIND_SECRET, self.observe(keystore), scope))

    def _scope_of(self, secret_type: str) -> str | None:
        for scope, watched_type in self._scopes.items():
            if watched_type is None or watched_type == secret_type:
                return scope
        return None
