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
from schemas.messages import OBJECT_FORMAT
from schemas.streams import LEASE_BUCKET, WATCHER_STATE_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import (
    CERTCHECK_GROUP,
    CERTCHECK_PLURAL,
    CERTCHECK_VERSION,
    api_client,
    collection,
)
from services.common.lease import Lease, LeaseLostError
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.domain.clusterchecks import BY_TOKEN
from services.domain.clusterchecks import PLURAL as CLUSTER_PLURAL
from services.watcher.cluster import (
    CHECKS,
    NAMESPACES,
    RawAPIService,
    RawClusterCertCheck,
    RawCRD,
    RawNamespace,
    RawWebhookConfiguration,
    Shares,
    cluster_source_observed,
)
from services.watcher.extract import (
    RawCertCheck,
    RawCertificate,
    RawConfigMap,
    RawSecret,
    certcheck_observed,
    certificate_observed,
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
    on_listed: Callable[[set[tuple[str, str]]], None] = lambda keys: None,
) -> Sink[Any]:
    def upsert(item: Any) -> None:
        put(Upsert(kind, observe(item), scope))
        after(item, False)

    def delete(item: Any) -> None:
        meta = item.metadata
        put(Delete(kind, meta.namespace, meta.name, meta.uid, meta.resourceVersion, scope))
        after(item, True)

    def listed(keys: set[tuple[str, str]]) -> None:
        on_listed(keys)
        put(Listed(kind, keys, scope))

    return Sink(
        upsert=upsert,
        delete=delete,
        listed=listed,
        progress=lambda resource_version: put(Progress(kind, resource_version, scope)),
    )


def _shares_sink(
    changed: Callable[[Any, bool], None], listed: Callable[[set[tuple[str, str]]], None]
) -> Sink[Any]:
    """Namespaces and ClusterCertChecks are not published themselves but as shares (always listed in
    full, they are few: their watches save no progress)."""
    return Sink(
        upsert=lambda item: changed(item, False),
        delete=lambda item: changed(item, True),
        listed=listed,
        progress=lambda resource_version: None,
    )


def _cluster_source_sink(token: str, put: Any) -> Sink[Any]:
    """An object holding CA bundles is published while it holds one, and removed when it no longer does."""

    def upsert(item: Any) -> None:
        observed = cluster_source_observed(token, item)
        if observed is None:  # removed, if it was published (a Delete without uid is only for those)
            put(Delete(token, subjects.CLUSTER_NAMESPACE, item.metadata.name, "", "", token))
        else:
            put(Upsert(token, observed, token))

    def delete(item: Any) -> None:
        meta = item.metadata
        put(Delete(token, subjects.CLUSTER_NAMESPACE, meta.name, meta.uid, meta.resourceVersion, token))

    return Sink(
        upsert=upsert,
        delete=delete,
        listed=lambda keys: put(Listed(token, keys, token)),
        progress=lambda resource_version: put(Progress(token, resource_version, token)),
    )


def _cluster_source_watches(
    settings: Settings, api: client.ApiClient, put: Any, resume: dict[str, str | None]
) -> dict[str, ListWatch[Any]]:
    calls: dict[str, tuple[Any, type[Any]]] = {
        subjects.KIND_VALIDATING_WEBHOOK: (
            collection(api, "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"),
            RawWebhookConfiguration,
        ),
        subjects.KIND_MUTATING_WEBHOOK: (
            collection(api, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"),
            RawWebhookConfiguration,
        ),
        subjects.KIND_APISERVICE: (
            collection(api, "/apis/apiregistration.k8s.io/v1/apiservices"),
            RawAPIService,
        ),
        subjects.KIND_CRD: (
            collection(api, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
            RawCRD,
        ),
    }
    return {
        token: ListWatch(
            BY_TOKEN[token].plural,
            call,
            raw_type,
            key=lambda o: (subjects.CLUSTER_NAMESPACE, o.metadata.name),
            sink=_cluster_source_sink(token, put),
            page_size=settings.list_page_size,
            resume_from=resume.get(token),
        )
        for token, (call, raw_type) in calls.items()
    }


CERT_MANAGER_GROUP, CERT_MANAGER_VERSION, CERTIFICATES_PLURAL = "cert-manager.io", "v1", "certificates"


def _certificates_path() -> str:
    return f"/apis/{CERT_MANAGER_GROUP}/{CERT_MANAGER_VERSION}/{CERTIFICATES_PLURAL}"


def certificates_watched(settings: Settings, api: client.ApiClient) -> bool:
    """Whether to watch cert-manager Certificates: as set, or (auto) if the API server serves them to
    this watcher. Decided once, at start: a cert-manager installed later is watched after a restart."""
    setting = settings.watch_certificates.strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting != "auto":
        return False
    try:
        collection(api, _certificates_path())(limit=1).release_conn()
    except ApiException as exc:
        log.info(
            "not watching cert-manager Certificates (HTTP %s): the default renewal point is used", exc.status
        )
        return False
    return True


def watch_config(settings: Settings, certificates: bool = False) -> str:
    """What the watches select, and the format they publish in: saved progress is only resumed under
    the same (a watcher of another format lists everything again, publishing each object anew)."""
    return msgspec.json.encode(
        {
            "object_format": OBJECT_FORMAT,
            "secret_types": sorted(t or "*" for t in secret_scopes(settings).values()),
            "secret_label_selector": settings.secret_label_selector,
            "configmaps": settings.configmaps_watched,
            "configmap_label_selector": settings.configmap_label_selector,
            "cluster_sources": settings.cluster_sources_watched,
            "certificates": certificates,
        }
    ).decode()


def build_watches(
    settings: Settings,
    api: client.ApiClient,
    put: Any,
    resume: dict[str, str | None],
    certificates: bool = False,
) -> dict[str, ListWatch[Any]]:
    """The watches by scope: one per Secret type, one for ConfigMaps and one for CertChecks."""
    secrets = SecretObserver(settings, api, put)
    watches: dict[str, ListWatch[Any]] = {}
    for scope, secret_type in secret_scopes(settings).items():
        kwargs: dict[str, Any] = {}
        if secret_type:
            kwargs["field_selector"] = f"type={secret_type}"
        if settings.secret_label_selector:
            kwargs["label_selector"] = settings.secret_label_selector
        watches[scope] = ListWatch(
            f"secrets/{secret_type or 'all'}",
            collection(api, "/api/v1/secrets", **kwargs),
            RawSecret,
            key=lambda s: (s.metadata.namespace, s.metadata.name),
            sink=_sink(
                subjects.KIND_SECRET,
                scope,
                put,
                secrets.observe,
                secrets.after,
                functools.partial(secrets.listed, scope),
            ),
            page_size=settings.list_page_size,
            resume_from=resume.get(scope),
        )
    if settings.configmaps_watched:
        configmap_kwargs: dict[str, Any] = {}
        if settings.configmap_label_selector:
            configmap_kwargs["label_selector"] = settings.configmap_label_selector
        watches[subjects.KIND_CONFIGMAP] = ListWatch(
            "configmaps",
            collection(api, "/api/v1/configmaps", **configmap_kwargs),
            RawConfigMap,
            key=lambda c: (c.metadata.namespace, c.metadata.name),
            sink=_sink(subjects.KIND_CONFIGMAP, subjects.KIND_CONFIGMAP, put, configmap_observed),
            page_size=settings.list_page_size,
            resume_from=resume.get(subjects.KIND_CONFIGMAP),
        )
    if settings.cluster_sources_watched:
        watches.update(_cluster_source_watches(settings, api, put, resume))
    if certificates:
        kind = subjects.KIND_CERTIFICATE
        watches[kind] = ListWatch(
            "certificates",
            collection(api, _certificates_path()),
            RawCertificate,
            key=lambda c: (c.metadata.namespace, c.metadata.name),
            sink=_sink(kind, kind, put, certificate_observed),
            page_size=settings.list_page_size,
            resume_from=resume.get(kind),
        )
    shares = Shares(put)
    watches[NAMESPACES] = ListWatch(
        "namespaces",
        collection(api, "/api/v1/namespaces"),
        RawNamespace,
        key=lambda n: ("", n.metadata.name),
        sink=_shares_sink(shares.namespace, lambda keys: shares.listed(NAMESPACES, keys)),
        page_size=settings.list_page_size,
    )
    watches[CHECKS] = ListWatch(
        "clustercertchecks",
        collection(api, f"/apis/{CERTCHECK_GROUP}/{CERTCHECK_VERSION}/{CLUSTER_PLURAL}"),
        RawClusterCertCheck,
        key=lambda c: ("", c.metadata.name),
        sink=_shares_sink(shares.check, lambda keys: shares.listed(CHECKS, keys)),
        page_size=settings.list_page_size,
    )
    watches[subjects.KIND_CERTCHECK] = ListWatch(
        "certchecks",
        collection(api, f"/apis/{CERTCHECK_GROUP}/{CERTCHECK_VERSION}/{CERTCHECK_PLURAL}"),
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
    scopes = [
        *secret_scopes(settings),
        subjects.KIND_CONFIGMAP,
        subjects.KIND_CERTCHECK,
        subjects.KIND_CERTIFICATE,
        *subjects.CLUSTER_SOURCE_KINDS,
    ]
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

    certificates = await asyncio.to_thread(certificates_watched, settings, api)
    config = watch_config(settings, certificates)
    if await load_progress(progress_kv, WATCH_CONFIG_KEY) != config:
        log.info("what is watched changed (now %s): listing Secrets and ConfigMaps again", config)
        resume = {s: resume[s] if s == subjects.KIND_CERTCHECK else None for s in scopes}
        configmap_scopes = {subjects.KIND_CONFIGMAP} if settings.configmaps_watched else set()
        cluster_scopes = {
            token: {token} if settings.cluster_sources_watched else set()
            for token in subjects.CLUSTER_SOURCE_KINDS
        }

        async def save_config() -> None:
            await progress_kv.put(f"rv.{WATCH_CONFIG_KEY}", config.encode())
            log.info("every object no longer watched is tombstoned")

        publisher.expect_full_listing(
            {
                subjects.KIND_SECRET: set(secret_scopes(settings)),
                subjects.KIND_CONFIGMAP: configmap_scopes,
                **cluster_scopes,
                subjects.KIND_CERTIFICATE: {subjects.KIND_CERTIFICATE} if certificates else set(),
            },
            save_config,
        )
        if not certificates:
            put(Listed(subjects.KIND_CERTIFICATE, set(), UNWATCHED))
        for kind, kind_scopes in [(subjects.KIND_CONFIGMAP, configmap_scopes), *cluster_scopes.items()]:
            if not kind_scopes:
                put(Listed(kind, set(), UNWATCHED))
    log.info("resuming watches from %s", resume)

    watches.update(build_watches(settings, api, put, resume, certificates))
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
    # CertChecks (and ClusterCertChecks) first, so the evaluator knows the selectors before the Secrets
    # flood in.
    first = (subjects.KIND_CERTCHECK, NAMESPACES, CHECKS)
    for scope in first:
        watches[scope].start()
    for scope, watch in watches.items():
        if scope not in first:
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
