"""The watcher service: wiring of the Kubernetes list/watches to the publisher."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from kubernetes import client

from schemas import subjects
from schemas.streams import WATCHER_STATE_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, api_client
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.watcher.extract import RawCertCheck, RawSecret, certcheck_observed, secret_observed
from services.watcher.listwatch import ListWatch, Sink
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


def _sink(kind: str, scope: str, put: Any, observe: Any) -> Sink[Any]:
    return Sink(
        upsert=lambda item: put(Upsert(kind, observe(item), scope)),
        delete=lambda item: put(
            Delete(
                kind,
                item.metadata.namespace,
                item.metadata.name,
                item.metadata.uid,
                item.metadata.resourceVersion,
                scope,
            )
        ),
        listed=lambda keys: put(Listed(kind, keys, scope)),
        progress=lambda resource_version: put(Progress(kind, resource_version, scope)),
    )


def secret_scopes(settings: Settings) -> dict[str, str | None]:
    """One watch per Secret type, each filtered by the API server: {scope: type or None for all types}."""
    types = [t.strip() for t in settings.secret_types.split(",") if t.strip()]
    if not types or "*" in types:
        return {f"{subjects.KIND_SECRET}.all": None}
    return {f"{subjects.KIND_SECRET}.{t}": t for t in dict.fromkeys(types)}


def build_watches(
    settings: Settings, api: client.ApiClient, put: Any, resume: dict[str, str | None]
) -> dict[str, ListWatch[Any]]:
    """The watches by scope: one per Secret type, and one for CertChecks."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
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
            sink=_sink(subjects.KIND_SECRET, scope, put, secret_observed),
            page_size=settings.list_page_size,
            resume_from=resume.get(scope),
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
    bus = await bus_mod.connect(settings.nats_url, "certcheck-watcher")
    await bus_mod.ensure_streams(bus)
    published_state = await load_published(bus)
    log.info("loaded %d published objects from the stream", len(published_state[0]))
    progress_kv = await bus_mod.key_value(bus, WATCHER_STATE_BUCKET, "how far the watcher's watches got")
    scopes = [*secret_scopes(settings), subjects.KIND_CERTCHECK]
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
