"""The watcher service: wiring of the Kubernetes list/watches to the publisher."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from kubernetes import client

from schemas import subjects
from schemas.messages import OBJECT_FORMAT
from schemas.streams import LEASE_BUCKET, WATCHER_STATE_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, api_client
from services.common.lease import Lease, LeaseLostError
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.watcher.extract import (
    RawCertCheck,
    RawConfigMap,
    RawSecret,
    certcheck_observed,
    configmap_observed,
)
from services.watcher.listwatch import ListWatch, Sink
from services.watcher.observer import SecretObserver, secret_scopes
from services.watcher.publisher import (
    UNWATCHED,
    WATCH_CONFIG_KEY,
    Change,
    Delete,
    Listed,
    Progress,
    Publisher,
    Upsert,
    load_progress,
    load_published,
    remove_stale,
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


def watch_config(settings: Settings) -> str:
    """What the watches select, and the format they publish in: saved progress is only resumed under
    the same (a watcher of another format lists everything again, publishing each object anew)."""
    return msgspec.json.encode(
        {
            "object_format": OBJECT_FORMAT,
            "secret_types": sorted(t or "*" for t in secret_scopes(settings).values()),
            "secret_label_selector": settings.secret_label_selector,
            "configmaps": settings.configmaps_watched,
            "configmap_label_selector": settings.configmap_label_selector,
        }
    ).decode()


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
    async with bus_mod.service_bus(settings, "watcher") as bus:
        await serve(bus, api_client(settings.kubeconfig), settings, health, stop)


async def serve(
    bus: bus_mod.Bus, api: client.ApiClient, settings: Settings, health: Health, stop: asyncio.Event
) -> None:
    """Stand by for the watcher lease; while holding it, list, watch and publish."""
    leases = await bus_mod.key_value(bus, LEASE_BUCKET, "leader leases")
    lease = Lease(leases, "watcher", settings.instance_id, settings.lease_seconds)
    health.set_ready(True)  # a standby is healthy: it takes over when the active watcher goes
    while not stop.is_set():
        log.info("standing by for the watcher lease as %s", settings.instance_id)
        if not await lease.acquire(stop):
            return
        log.info("holding the watcher lease as %s", settings.instance_id)
        try:
            await _watch(settings, bus, api, stop, lease)
        finally:
            await lease.release()


async def _watch(
    settings: Settings, bus: bus_mod.Bus, api: client.ApiClient, stop: asyncio.Event, lease: Lease
) -> None:
    """List, watch and publish, for as long as this replica holds the lease."""
    loaded = await load_published(bus)
    known = loaded.known
    log.info("loaded %d published objects from the stream", len(known))
    progress_kv = await bus_mod.key_value(bus, WATCHER_STATE_BUCKET, "how far the watcher's watches got")
    scopes = [*secret_scopes(settings), subjects.KIND_CONFIGMAP, subjects.KIND_CERTCHECK]
    resume = {scope: await load_progress(progress_kv, scope) for scope in scopes}
    if loaded.stale:
        # Published under another subject layout: removed, and everything listed and published again.
        log.info("%d objects published in an older layout: publishing everything again", len(loaded.stale))
        await remove_stale(bus, loaded.stale)
        resume = dict.fromkeys(scopes)
    loop = asyncio.get_running_loop()
    watches: dict[str, ListWatch[Any]] = {}
    publisher = Publisher(bus, known, progress_kv)

    def put(change: Change) -> None:
        loop.call_soon_threadsafe(publisher.queue.put_nowait, change)

    config = watch_config(settings)
    if await load_progress(progress_kv, WATCH_CONFIG_KEY) != config:
        log.info("what is watched changed (now %s): listing Secrets and ConfigMaps again", config)
        resume = {s: resume[s] if s == subjects.KIND_CERTCHECK else None for s in scopes}
        configmap_scopes = {subjects.KIND_CONFIGMAP} if settings.configmaps_watched else set()

        async def save_config() -> None:
            await progress_kv.put(f"rv.{WATCH_CONFIG_KEY}", config.encode())
            log.info("every object no longer watched is tombstoned")

        publisher.expect_full_listing(
            {subjects.KIND_SECRET: set(secret_scopes(settings)), subjects.KIND_CONFIGMAP: configmap_scopes},
            save_config,
        )
        if not configmap_scopes:
            put(Listed(subjects.KIND_CONFIGMAP, set(), UNWATCHED))
    log.info("resuming watches from %s", resume)

    watches.update(build_watches(settings, api, put, resume))
    publishing = asyncio.create_task(publisher.run(), name="publish")
    saving = asyncio.create_task(publisher.save_progress(), name="save-progress")
    expiring = asyncio.create_task(publisher.watch_acks(), name="watch-acks")
    until = asyncio.Event()  # asked to stop, or the lease lost: this replica stands by again

    async def hold() -> None:
        try:
            await lease.hold()
        except LeaseLostError as exc:
            log.warning("%s; standing by", exc)
            until.set()

    async def relay_stop() -> None:
        await stop.wait()
        until.set()

    holding = asyncio.create_task(hold(), name="hold-lease")
    relaying = asyncio.create_task(relay_stop(), name="relay-stop")
    # CertChecks first, so the evaluator knows the selectors before the Secrets flood in.
    watches[subjects.KIND_CERTCHECK].start()
    for scope, watch in watches.items():
        if scope != subjects.KIND_CERTCHECK:
            watch.start()
    try:
        await supervise(until, publishing, saving, expiring, holding, relaying)
    finally:
        for watch in watches.values():
            watch.stop()
        if not lease.fenced():  # never publish once another replica may have taken over
            await publisher.flush(timeout=2)


def run(argv: list[str] | None = None) -> None:
    run_service("watcher", main, argv)


if __name__ == "__main__":
    run()
