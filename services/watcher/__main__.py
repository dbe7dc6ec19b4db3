"""The watcher service: wiring of the Kubernetes list/watches to the publisher."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from schemas import subjects
from schemas.streams import WATCHER_STATE_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, api_client
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.watcher.extract import (
    RawCertCheck,
    RawConfigMap,
    RawSecret,
    certcheck_observed,
    configmap_observed,
    decode_small_values,
    secret_observed,
)
from services.watcher.listwatch import ListWatch, Sink
from services.watcher.passwords import PasswordIndex, password_ref
from services.watcher.publisher import (
    Change,
    Delete,
    Listed,
    Progress,
    Publisher,
    Upsert,
    load_progress,
    load_published,
)

log = logging.getLogger("certcheck.watcher")


def _sink(
    kind: str,
    scope: str,
    put: Any,
    observe: Any,
    after: Callable[[Any, bool], None] = lambda item, deleted: None,
) -> Sink[Any]:
    def upsert(item: Any) -> None:
        put(Upsert(kind, observe(item), scope))
        after(item, False)

    def delete(item: Any) -> None:
        meta = item.metadata
        put(Delete(kind, meta.namespace, meta.name, meta.uid, meta.resourceVersion, scope))
        after(item, True)

    return Sink(
        upsert=upsert,
        delete=delete,
        listed=lambda keys: put(Listed(kind, keys, scope)),
        progress=lambda resource_version: put(Progress(kind, resource_version, scope)),
    )


def secret_scopes(settings: Settings) -> dict[str, str | None]:
    """One watch per Secret type, each filtered by the API server: {scope: type or None for all types}."""
    types = [t.strip() for t in settings.secret_types.split(",") if t.strip()]
    if not types or "*" in types:
        return {f"{subjects.KIND_SECRET}.all": None}
    return {f"{subjects.KIND_SECRET}.{t}": t for t in dict.fromkeys(types)}


_raw_secret = msgspec.json.Decoder(RawSecret)


def read_raw_secret(core: client.CoreV1Api, namespace: str, name: str) -> RawSecret | None:
    try:
        response: Any = core.read_namespaced_secret(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    try:
        return _raw_secret.decode(response.data)
    finally:
        response.release_conn()


class SecretObserver:
    """Observes Secrets, reading the keystore passwords they point at, and re-reads a keystore Secret
    when its password Secret changes. Shared by every Secret watch."""

    def __init__(self, settings: Settings, core: client.CoreV1Api, put: Any) -> None:
        self._core = core
        self._put = put
        self._scopes = secret_scopes(settings)

        def read_data(namespace: str, name: str) -> dict[str, bytes] | None:
            secret = read_raw_secret(core, namespace, name)
            return None if secret is None else decode_small_values(secret.data or {})

        self.passwords = PasswordIndex(read_data)

    def observe(self, secret: RawSecret) -> Any:
        meta = secret.metadata
        referenced = self.passwords.resolve(meta.namespace, meta.name, password_ref(meta.annotations))
        return secret_observed(secret, referenced)

    def after(self, secret: RawSecret, deleted: bool) -> None:
        """Once a Secret changed or went: re-read the keystores whose password it holds."""
        namespace = secret.metadata.namespace
        if deleted:
            self.passwords.forget(namespace, secret.metadata.name)
        for holder in self.passwords.keystores_using(namespace, secret.metadata.name):
            try:
                keystore = read_raw_secret(self._core, namespace, holder)
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


def build_watches(
    settings: Settings, api: client.ApiClient, put: Any, resume: dict[str, str | None]
) -> dict[str, ListWatch[Any]]:
    """The watches by scope: one per Secret type, one for ConfigMaps and one for CertChecks."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    secrets = SecretObserver(settings, core, put)
    watches: dict[str, ListWatch[Any]] = {}
    for scope, secret_type in secret_scopes(settings).items():
        kwargs: dict[str, Any] = {}
        if secret_type:
            kwargs["field_selector"] = f"type={secret_type}"
        if settings.secret_label_selector:
            kwargs["label_selector"] = settings.secret_label_selector
        watches[scope] = ListWatch(
            f"secrets/{secret_type or 'all'}",
            functools.partial(core.list_secret_for_all_namespaces, **kwargs),
            RawSecret,
            key=lambda s: (s.metadata.namespace, s.metadata.name),
            sink=_sink(subjects.KIND_SECRET, scope, put, secrets.observe, secrets.after),
            page_size=settings.list_page_size,
            resume_from=resume.get(scope),
        )
    if settings.configmaps_watched:
        configmap_kwargs: dict[str, Any] = {}
        if settings.configmap_label_selector:
            configmap_kwargs["label_selector"] = settings.configmap_label_selector
        watches[subjects.KIND_CONFIGMAP] = ListWatch(
            "configmaps",
            functools.partial(core.list_config_map_for_all_namespaces, **configmap_kwargs),
            RawConfigMap,
            key=lambda c: (c.metadata.namespace, c.metadata.name),
            sink=_sink(subjects.KIND_CONFIGMAP, subjects.KIND_CONFIGMAP, put, configmap_observed),
            page_size=settings.list_page_size,
            resume_from=resume.get(subjects.KIND_CONFIGMAP),
        )
    watches[subjects.KIND_CERTCHECK] = ListWatch(
        "certchecks",
        functools.partial(
            custom.list_cluster_custom_object, CERTCHECK_GROUP, CERTCHECK_VERSION, CERTCHECK_PLURAL
        ),
        RawCertCheck,
        key=lambda c: (c.metadata.namespace, c.metadata.name),
        sink=_sink(subjects.KIND_CERTCHECK, subjects.KIND_CERTCHECK, put, certcheck_observed),
        page_size=settings.list_page_size,
        resume_from=resume.get(subjects.KIND_CERTCHECK),
    )
    return watches


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    bus = await bus_mod.connect(
        settings.nats_url, "certcheck-watcher", settings.nats_user, settings.nats_password
    )
    await bus_mod.ensure_streams(bus, settings.stream_replicas)
    published_state = await load_published(bus)
    log.info("loaded %d published objects from the stream", len(published_state[0]))
    progress_kv = await bus_mod.key_value(
        bus, WATCHER_STATE_BUCKET, "how far the watcher's watches got", settings.stream_replicas
    )
    scopes = [*secret_scopes(settings), subjects.KIND_CONFIGMAP, subjects.KIND_CERTCHECK]
    resume = {scope: await load_progress(progress_kv, scope) for scope in scopes}
    log.info("resuming watches from %s", resume)
    loop = asyncio.get_running_loop()
    watches: dict[str, ListWatch[Any]] = {}
    publisher = Publisher(bus, published_state, lambda scope: watches[scope].request_relist(), progress_kv)

    def put(change: Change) -> None:
        loop.call_soon_threadsafe(publisher.queue.put_nowait, change)

    watches.update(build_watches(settings, api_client(settings.kubeconfig), put, resume))
    publishing = asyncio.create_task(publisher.run(), name="publish")
    saving = asyncio.create_task(publisher.save_progress(), name="save-progress")
    # CertChecks first, so the evaluator knows the selectors before the Secrets flood in.
    watches[subjects.KIND_CERTCHECK].start()
    for scope, watch in watches.items():
        if scope != subjects.KIND_CERTCHECK:
            watch.start()
    health.set_ready(True)
    try:
        await supervise(stop, publishing, saving)
    finally:
        for watch in watches.values():
            watch.stop()
        await publisher.flush(timeout=5)
        await bus.close()


def run(argv: list[str] | None = None) -> None:
    run_service("watcher", main, argv)


if __name__ == "__main__":
    run()
