"""Publishing observed objects to the bus, once per real change.

The publisher remembers, per object, the digest of what it last published (loaded from the stream at
start-up), so a restart or a re-list that finds nothing changed publishes nothing, and objects that
vanished while nobody watched get a tombstone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from schemas import subjects
from schemas.messages import ObjectDeleted, encoder
from schemas.streams import HDR_DIGEST, HDR_MSG_ID, HDR_RESOURCE_VERSION, HDR_SCOPE, OBJECTS
from services.common.bus import Bus
from services.watcher.extract import Observed, digest

log = logging.getLogger(__name__)

TOMBSTONE = "deleted"
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600

published = Counter("certcheck_watcher_published_total", "Objects published", ["kind", "change"])
publish_failures = Counter("certcheck_watcher_publish_failures_total", "Publishes that failed", ["kind"])

ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


# Every change names its *scope*: the watch it came from (e.g. "secret.kubernetes.io/tls", one watch per
# Secret type, each filtered by the API server). A LIST only speaks for the objects of its own scope.


@dataclass(frozen=True)
class Upsert:
    kind: str
    observed: Observed
    scope: str


@dataclass(frozen=True)
class Delete:
    kind: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    scope: str


@dataclass(frozen=True)
class Listed:
    kind: str
    keys: set[tuple[str, str]]
    scope: str


@dataclass(frozen=True)
class Progress:
    kind: str
    resource_version: str
    scope: str


Change = Upsert | Delete | Listed | Progress

PROGRESS_SAVE_INTERVAL = 1.0


async def load_progress(kv: KeyValue, kind: str) -> str | None:
    """The resourceVersion up to which a previous run published everything, if any."""
    try:
        entry = await kv.get(f"rv.{kind}")
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def load_published(bus: Bus) -> tuple[dict[ObjectKey, str], dict[ObjectKey, str]]:
    """Digest and scope of the last message per object in the objects stream (headers only)."""
    info = await bus.js.stream_info(OBJECTS.name)
    last_seq = info.state.last_seq
    known: dict[ObjectKey, str] = {}
    scopes: dict[ObjectKey, str] = {}
    if info.state.messages == 0:
        return known, scopes
    sub = await bus.js.subscribe(
        subjects.OBJECTS_ALL,
        stream=OBJECTS.name,  # named, not looked up: the watcher's NATS user may not list streams
        ordered_consumer=True,
        headers_only=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            kind, namespace, name = subjects.split_object_subject(msg.subject)
            known[(kind, namespace, name)] = (msg.headers or {}).get(HDR_DIGEST, "")
            scopes[(kind, namespace, name)] = (msg.headers or {}).get(HDR_SCOPE, kind)
            if msg.metadata.sequence.stream >= last_seq:
                break
    finally:
        await sub.unsubscribe()
    return known, scopes


class Publisher:
    def __init__(
        self,
        bus: Bus,
        published_state: tuple[dict[ObjectKey, str], dict[ObjectKey, str]],
        on_lost: Callable[[str], None],
        progress_kv: KeyValue,
    ) -> None:
        self._bus = bus
        self._known, self._scopes = published_state
        self._progress_kv = progress_kv
        self._progress: dict[str, str] = {}
        self._saved: dict[str, str] = {}
        self._on_lost = on_lost  # asks a scope's ListWatch to re-list when a publish failed
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    async def flush(self, timeout: float) -> None:
        """Publish what is queued and wait for the acknowledgements (on shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.queue.empty():
                    await self._handle(self.queue.get_nowait())
                if self._bus.js.publish_async_pending():
                    await self._bus.js.publish_async_completed()
                await self._save_progress()

    async def save_progress(self) -> None:
        """Persist, once the publishes before it are acknowledged, how far each watch got."""
        while True:
            await asyncio.sleep(PROGRESS_SAVE_INTERVAL)
            await self._save_progress()

    async def _save_progress(self) -> None:
        pending = {k: v for k, v in self._progress.items() if self._saved.get(k) != v}
        if not pending:
            return
        if self._bus.js.publish_async_pending():
            await self._bus.js.publish_async_completed()
        for scope, resource_version in pending.items():
            try:
                await self._progress_kv.put(f"rv.{scope}", resource_version.encode())
            except Exception as exc:
                log.warning("could not save watch progress of %s: %s", scope, exc)
                continue
            self._saved[scope] = resource_version

    async def run(self) -> None:
        while True:
            change = await self.queue.get()
            try:
                await self._handle(change)
            except Exception:
                log.exception("publishing failed; will re-list %s", change.scope)
                publish_failures.labels(change.kind).inc()
                self._on_lost(change.scope)

    async def _handle(self, change: Change) -> None:
        if isinstance(change, Progress):
            self._progress[change.scope] = change.resource_version
        elif isinstance(change, Upsert):
            await self._upsert(change)
        elif isinstance(change, Delete):
            key = (change.kind, change.namespace, change.name)
            await self._delete(key, change.uid, change.resource_version, change.scope)
        else:
            gone = [
                key
                for key, value in self._known.items()
                if key[0] == change.kind
                and self._scopes.get(key, change.kind) == change.scope
                and value != TOMBSTONE
                and (key[1], key[2]) not in change.keys
            ]
            for key in gone:
                await self._delete(key, "", "", change.scope)

    async def _upsert(self, change: Upsert) -> None:
        observed = change.observed
        key = (change.kind, observed.namespace, observed.name)
        content_digest = digest(observed)
        if self._known.get(key) == content_digest:
            return
        await self._publish(
            key,
            encoder.encode(observed),
            content_digest,
            observed.uid,
            observed.resource_version,
            change.scope,
        )
        published.labels(change.kind, "upsert").inc()

    async def _delete(self, key: ObjectKey, uid: str, resource_version: str, scope: str) -> None:
        kind, namespace, name = key
        if self._known.get(key) in (TOMBSTONE, None) and uid == "":
            return
        message = ObjectDeleted(kind, namespace, name, uid, resource_version)
        await self._publish(
            key,
            encoder.encode(message),
            TOMBSTONE,
            uid or "unknown",
            resource_version or "relist",
            scope,
            ttl=TOMBSTONE_TTL_SECONDS,
        )
        published.labels(kind, "delete").inc()

    async def _publish(
        self,
        key: ObjectKey,
        payload: bytes,
        content_digest: str,
        uid: str,
        resource_version: str,
        scope: str,
        ttl: float | None = None,
    ) -> None:
        kind, namespace, name = key
        headers = {
            # Identical publishes from several watcher replicas collapse into one message.
            HDR_MSG_ID: f"{kind}/{uid}/{resource_version}/{content_digest}",
            HDR_DIGEST: content_digest,
            HDR_RESOURCE_VERSION: resource_version,
            HDR_SCOPE: scope,
        }
        future = await self._bus.js.publish_async(
            subjects.object_subject(kind, namespace, name), payload, headers=headers, msg_ttl=ttl
        )
        self._known[key] = content_digest
        self._scopes[key] = scope
        future.add_done_callback(lambda f: self._acked(key, scope, f))

    def _acked(self, key: ObjectKey, scope: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            log.warning(
                "publish of %s not acknowledged: %s",
                "/".join(key),
                None if future.cancelled() else future.exception(),
            )
            publish_failures.labels(key[0]).inc()
            self._known.pop(key, None)
            self._progress.pop(scope, None)  # never record progress past a lost publish
            self._on_lost(scope)
