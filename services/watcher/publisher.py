"""Publishing observed objects to the bus, once per real change, none lost.

The publisher remembers, per object, what it last published (loaded from the stream at start-up), so a
restart or a re-list that finds nothing changed publishes nothing, and objects that vanished while
nobody watched get a tombstone.

Publishes are pipelined. Each one that fails or whose acknowledgement does not come in time is
published again, with backoff, until it lands or a newer change of the same object replaces it; a
repeat that did land is dropped by the server (same ``Nats-Msg-Id``). How far a watch got (its
resourceVersion) is saved only once every publish before that point was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from schemas import subjects
from schemas.messages import (
    CertCheckObserved,
    CertificateObserved,
    CertSource,
    ClusterSourceObserved,
    ObjectDeleted,
    encoder,
)
from schemas.streams import HDR_DIGEST, HDR_MSG_ID, HDR_RESOURCE_VERSION, HDR_SCOPE, OBJECTS
from services.common.bus import Bus, TooLargeError, publish_pipelined
from services.common.consume import park
from services.common.logs import object_ref, trace
from services.watcher.extract import Observed, digest

log = logging.getLogger(__name__)

TOMBSTONE = "deleted"
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600
STALE_TTL_SECONDS = 60
ACK_TIMEOUT_SECONDS = 10.0
RETRY_CAP_SECONDS = 30.0
HEADROOM_BYTES = 8192  # under the server's max_payload: headers and the message's own framing

published = Counter("certcheck_watcher_published_total", "Objects published", ["kind", "change"])
publish_failures = Counter("certcheck_watcher_publish_failures_total", "Publishes that failed", ["kind"])
oversized = Counter(
    "certcheck_watcher_oversized_objects_total", "Objects too large for the bus, published cut down", ["kind"]
)
retrying = Gauge("certcheck_watcher_publishes_retrying", "Publishes waiting to be sent again")

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


@dataclass(frozen=True)
class Published:
    """The last message of one object in the stream, as far as the publisher knows."""

    digest: str  # TOMBSTONE for a deletion
    scope: str
    resource_version: str


@dataclass(frozen=True)
class _Send:
    key: ObjectKey
    ticket: int  # publishes are numbered in the order their changes came
    scope: str
    payload: bytes
    headers: dict[str, str]
    ttl: float | None


@dataclass(frozen=True)
class _Retry:
    send: _Send
    attempt: int


PROGRESS_SAVE_INTERVAL = 1.0
UNWATCHED = "unwatched"  # the scope a kind no longer watched "lists" nothing in
WATCH_CONFIG_KEY = "watch-config"  # what the saved progress was watched with


async def load_progress(kv: KeyValue, kind: str) -> str | None:
    """The resourceVersion up to which a previous run published everything, if any."""
    try:
        entry = await kv.get(f"rv.{kind}")
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


@dataclass
class Loaded:
    """What the objects stream holds: the last message per object, and the subjects of messages in a
    layout no longer read (an older subject layout, or another partition count) to be removed."""

    known: dict[ObjectKey, Published]
    stale: list[str]


async def load_published(bus: Bus, idle_timeout: float = 5.0) -> Loaded:
    """The last message per object in the objects stream (headers only). Stops at the last message the
    stream holds, even if that changes while reading (a tombstone expiring, say)."""
    info = await bus.js.stream_info(OBJECTS.name)
    loaded = Loaded({}, [])
    if info.state.messages == 0:
        return loaded
    sub = await bus.js.subscribe(
        subjects.OBJECTS_ALL,
        stream=OBJECTS.name,  # named, not looked up: the watcher's NATS user may not list streams
        ordered_consumer=True,
        headers_only=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout)
            except TimeoutError:
                break  # nothing more to read: what was waited for is gone
            headers = msg.headers or {}
            try:
                partition, kind, namespace, name = subjects.split_object_subject(msg.subject)
            except ValueError:
                partition, kind, namespace, name = -1, "", "", ""
            if partition != subjects.partition_of(namespace, bus.partitions):
                loaded.stale.append(msg.subject)
            else:
                loaded.known[(kind, namespace, name)] = Published(
                    headers.get(HDR_DIGEST, ""),
                    headers.get(HDR_SCOPE, kind),
                    headers.get(HDR_RESOURCE_VERSION, ""),
                )
            if msg.metadata.sequence.stream >= info.state.last_seq or msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return loaded


async def remove_stale(bus: Bus, stale: list[str]) -> None:
    """Replace each stale message by an empty one that expires: no reader filters on those subjects."""
    for subject in stale:
        await bus.js.publish(subject, b"", stream=OBJECTS.name, msg_ttl=STALE_TTL_SECONDS)


class Publisher:
    def __init__(
        self,
        bus: Bus,
        known: dict[ObjectKey, Published],
        progress_kv: KeyValue,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
    ) -> None:
        self._bus = bus
        self._known = known
        self._progress_kv = progress_kv
        self._ack_timeout = ack_timeout
        self.queue: asyncio.Queue[Change | _Retry] = asyncio.Queue()
        self._next_ticket = 0
        self._newest: dict[ObjectKey, int] = {}  # the ticket of each object's newest publish
        self._unsettled: dict[str, set[int]] = {}  # per scope: tickets sent but not acknowledged
        self._inflight: dict[int, tuple[_Send, int, asyncio.Future[Any], float]] = {}
        self._marks: dict[str, deque[tuple[int, str]]] = {}  # per scope: (first ticket after, rv)
        self._safe: dict[str, str] = {}  # per scope: a resourceVersion everything before is acked
        self._saved: dict[str, str] = {}
        self._retries = 0
        # After a change of what is watched, per kind: the scopes still to list, and what they listed.
        self._full_listings: dict[str, tuple[set[str], set[tuple[str, str]]]] = {}
        self._after_full_listings: Callable[[], Awaitable[None]] | None = None
        self._scopes_now: dict[str, frozenset[str]] = {}  # per kind: the scopes of what is watched now

    def expect_full_listing(
        self, scopes_by_kind: dict[str, set[str]], then: Callable[[], Awaitable[None]]
    ) -> None:
        """What is watched changed since the objects were published (another type, selector, or
        ConfigMaps turned off): once every scope of a kind has listed, what scopes no longer watched
        published of that kind and no scope listed is gone. ``then`` runs once all that is acknowledged.
        A kind with no scopes (no longer watched) is done at its ``Listed`` for scope UNWATCHED."""
        self._full_listings = {
            kind: (set(scopes) or {UNWATCHED}, set()) for kind, scopes in scopes_by_kind.items()
        }
        self._after_full_listings = then
        self._scopes_now = {kind: frozenset(scopes) for kind, scopes in scopes_by_kind.items()}

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            change = await self.queue.get()
            try:
                await self._handle(change)
            except Exception:  # a bug for one change must not stop the others
                log.exception("handling %s failed", type(change).__name__)

    async def watch_acks(self) -> None:
        """Give up on acknowledgements that did not come in time (their publish is sent again)."""
        while True:
            await asyncio.sleep(min(1.0, self._ack_timeout / 2))
            self._expire(time.monotonic())

    async def save_progress(self) -> None:
        """Persist, once the publishes before it are acknowledged, how far each watch got."""
        while True:
            await asyncio.sleep(PROGRESS_SAVE_INTERVAL)
            await self._save_progress()

    async def flush(self, timeout: float) -> None:
        """Publish what is queued and wait for the acknowledgements (on shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.queue.empty():
                    change = self.queue.get_nowait()
                    if not isinstance(change, _Retry):
                        await self._handle(change)
                while self._inflight:
                    await asyncio.sleep(0.02)
        await self._save_progress()

    def pending(self, scope: str) -> int:
        """Publishes of ``scope`` not acknowledged yet (in flight or waiting to be sent again)."""
        return len(self._unsettled.get(scope, ()))

    # --- changes -------------------------------------------------------------------------------

    async def _handle(self, change: Change | _Retry) -> None:
        if isinstance(change, Progress):
            self._marks.setdefault(change.scope, deque()).append((self._next_ticket, change.resource_version))
        elif isinstance(change, Upsert):
            await self._upsert(change)
        elif isinstance(change, Delete):
            key = (change.kind, change.namespace, change.name)
            await self._delete(key, change.uid, change.resource_version, change.scope)
        elif isinstance(change, _Retry):
            self._retries -= 1
            retrying.set(self._retries)
            if self._newest.get(change.send.key) == change.send.ticket:
                await self._send(change.send, change.attempt)
            else:  # a newer change of the object was published since
                self._settle(change.send)
        else:
            await self._listed(change)

    async def _listed(self, change: Listed) -> None:
        """Tombstones for what was published but a LIST no longer returns. After a change of what is
        watched, what older scopes published is gone once every scope listed, unless one listed it (an
        object this scope's watch brought since is under this scope: its LIST is not the whole truth)."""
        await self._tombstone_unlisted(change.kind, change.keys, lambda scope: scope == change.scope)
        full = self._full_listings.get(change.kind)
        if full is None:
            return
        waiting, listed = full
        waiting.discard(change.scope)
        listed.update(change.keys)
        if waiting:
            return
        del self._full_listings[change.kind]
        scopes = self._scopes_now[change.kind]
        await self._tombstone_unlisted(change.kind, listed, lambda scope: scope not in scopes)
        if not self._full_listings and self._after_full_listings is not None:
            then, self._after_full_listings = self._after_full_listings, None
            asyncio.get_running_loop().create_task(self._when_settled(then), name="after-full-listing")

    async def _tombstone_unlisted(
        self, kind: str, listed: set[tuple[str, str]], published_by: Callable[[str], bool]
    ) -> None:
        gone = [
            (key, last.scope)
            for key, last in self._known.items()
            if key[0] == kind
            and published_by(last.scope)
            and last.digest != TOMBSTONE
            and (key[1], key[2]) not in listed
        ]
        for key, published_scope in gone:
            await self._delete(key, "", "", published_scope)

    async def _when_settled(self, then: Callable[[], Awaitable[None]]) -> None:
        while any(self._unsettled.values()):
            await asyncio.sleep(0.2)
        await then()

    async def _upsert(self, change: Upsert) -> None:
        observed = change.observed
        key = (change.kind, observed.namespace, observed.name)
        content_digest = digest(observed)
        last = self._known.get(key)
        ref = object_ref(observed.namespace, observed.name, observed.resource_version)
        if last is not None and last.digest == content_digest and last.scope == change.scope:
            trace(log, "watcher", ref, "%s unchanged since the last publish: not published", change.kind)
            return  # (one published by a watch of another scope is published again, under this one)
        trace(log, "watcher", ref, "%s changed: publishing", change.kind)
        payload = self._fit(change.kind, observed)
        headers = {
            # Identical publishes from several watcher replicas collapse into one message.
            HDR_MSG_ID: (
                f"{change.kind}/{observed.uid}/{observed.resource_version}/{content_digest}/{change.scope}"
            ),
            HDR_DIGEST: content_digest,
            HDR_RESOURCE_VERSION: observed.resource_version,
            HDR_SCOPE: change.scope,
        }
        self._known[key] = Published(content_digest, change.scope, observed.resource_version)
        await self._send(self._new_send(key, change.scope, payload, headers, None), 0)
        published.labels(change.kind, "upsert").inc()

    async def _delete(self, key: ObjectKey, uid: str, resource_version: str, scope: str) -> None:
        kind, namespace, name = key
        last = self._known.get(key)
        if (last is None or last.digest == TOMBSTONE) and uid == "":
            return
        if resource_version:  # seen deleted by the watch: the deletion's own resourceVersion
            msg_id = f"{kind}/{uid}/{resource_version}/{TOMBSTONE}"
        else:  # found gone by a LIST: unique to the object and the last version published of it
            msg_id = f"{kind}/{namespace}/{name}/{TOMBSTONE}-after/{last.resource_version if last else ''}"
        message = ObjectDeleted(kind, namespace, name, uid or "unknown", resource_version or "relist")
        headers = {
            HDR_MSG_ID: msg_id,
            HDR_DIGEST: TOMBSTONE,
            HDR_RESOURCE_VERSION: resource_version or "relist",
            HDR_SCOPE: scope,
        }
        self._known[key] = Published(TOMBSTONE, scope, resource_version or "relist")
        trace(log, "watcher", object_ref(namespace, name, resource_version), "%s deleted: publishing", kind)
        send = self._new_send(key, scope, encoder.encode(message), headers, TOMBSTONE_TTL_SECONDS)
        await self._send(send, 0)
        published.labels(kind, "delete").inc()

    def _fit(self, kind: str, observed: Observed) -> bytes:
        """The message for ``observed``, cut down (and reported) if the bus would refuse it."""
        payload = encoder.encode(observed)
        budget = self._bus.nc.max_payload - HEADROOM_BYTES
        if len(payload) <= budget:
            return payload
        where = f"{kind} {observed.namespace}/{observed.name}"
        reason = f"{where} is too large for the bus ({len(payload)} bytes)"
        oversized.labels(kind).inc()
        log.error("%s: publishing it without its certificates", reason)
        if isinstance(observed, CertificateObserved):
            return payload  # a few names and a time: never too large (the server would say so)
        if isinstance(observed, CertCheckObserved):
            cut: Observed = msgspec.structs.replace(observed, status=msgspec.Raw(b"null"))
        else:
            error = CertSource("*", error=f"too large for certcheck to read ({len(payload)} bytes)")
            cut = msgspec.structs.replace(observed, sources=[error])
            if not isinstance(cut, ClusterSourceObserved):
                cut = msgspec.structs.replace(cut, other_keys=[])
        payload = encoder.encode(cut)
        if len(payload) <= budget:
            return payload
        if isinstance(cut, CertCheckObserved):
            log.error("%s even without its status: publishing it without notification targets", reason)
            return encoder.encode(msgspec.structs.replace(cut, notification=None))
        log.error("%s even without its certificates: publishing it without labels", reason)
        return encoder.encode(msgspec.structs.replace(cut, labels={}))

    # --- sending -------------------------------------------------------------------------------

    def _new_send(
        self, key: ObjectKey, scope: str, payload: bytes, headers: dict[str, str], ttl: float | None
    ) -> _Send:
        ticket = self._next_ticket
        self._next_ticket += 1
        self._newest[key] = ticket
        self._unsettled.setdefault(scope, set()).add(ticket)
        # The deduplication id holds the partition: the same change published under another subject
        # layout (after a change of partition count, or from the layout before partitions) is new.
        partition = subjects.partition_of(key[1], self._bus.partitions)
        headers = {**headers, HDR_MSG_ID: f"{partition}/{headers[HDR_MSG_ID]}"}
        return _Send(key, ticket, scope, payload, headers, ttl)

    def _subject(self, key: ObjectKey) -> str:
        kind, namespace, name = key
        return subjects.object_subject(
            subjects.partition_of(namespace, self._bus.partitions), kind, namespace, name
        )

    async def _send(self, send: _Send, attempt: int) -> None:
        try:
            future = await publish_pipelined(
                self._bus,
                self._subject(send.key),
                send.payload,
                send.headers,
                send.ttl,
            )
        except TooLargeError as exc:  # cannot be helped by sending again: reported, and given up
            await self._too_large(send, exc)
            return
        except Exception as exc:
            self._failed(send, attempt, exc)
            return
        self._inflight[send.ticket] = (send, attempt, future, time.monotonic() + self._ack_timeout)
        future.add_done_callback(lambda done: self._acked(send, attempt, done))

    def _acked(self, send: _Send, attempt: int, future: asyncio.Future[Any]) -> None:
        if self._inflight.pop(send.ticket, None) is None:
            return  # given up on already (timed out)
        if future.cancelled():
            self._failed(send, attempt, TimeoutError("publish cancelled"))
        elif future.exception() is not None:
            self._failed(send, attempt, future.exception())
        else:
            self._settle(send)
            if log.isEnabledFor(logging.DEBUG):
                ref = object_ref(send.key[1], send.key[2], send.headers.get(HDR_RESOURCE_VERSION, ""))
                trace(log, "watcher", ref, "published as message %s", getattr(future.result(), "seq", "?"))

    def _expire(self, now: float) -> None:
        for ticket, (send, attempt, future, deadline) in list(self._inflight.items()):
            if deadline <= now and not future.done():
                del self._inflight[ticket]
                future.cancel()  # frees its slot in nats-py's pipeline
                self._failed(send, attempt, TimeoutError(f"no acknowledgement in {self._ack_timeout:.0f}s"))

    def _failed(self, send: _Send, attempt: int, exc: BaseException | None) -> None:
        publish_failures.labels(send.key[0]).inc()
        delay = min(RETRY_CAP_SECONDS, 0.2 * 2**attempt)
        log.warning("publish of %s failed (%s), again in %.1fs", "/".join(send.key), exc, delay)
        self._retries += 1
        retrying.set(self._retries)
        retry = _Retry(send, attempt + 1)
        asyncio.get_running_loop().call_later(delay, self.queue.put_nowait, retry)

    def _settle(self, send: _Send) -> None:
        self._unsettled.get(send.scope, set()).discard(send.ticket)

    async def _too_large(self, send: _Send, exc: Exception) -> None:
        self._settle(send)
        summary = encoder.encode({"object": "/".join(send.key), "bytes": len(send.payload)})
        with contextlib.suppress(Exception):
            await park(self._bus, self._subject(send.key), summary, str(exc), "too-large")

    # --- progress ------------------------------------------------------------------------------

    def _advance(self, scope: str) -> None:
        """Move the scope's safe resourceVersion to the newest mark whose publishes are all acked."""
        marks = self._marks.get(scope)
        unsettled = self._unsettled.get(scope)
        oldest_unsettled = min(unsettled) if unsettled else math.inf
        while marks and marks[0][0] <= oldest_unsettled:
            self._safe[scope] = marks.popleft()[1]

    async def _save_progress(self) -> None:
        for scope in list(self._marks):
            self._advance(scope)
        for scope, resource_version in list(self._safe.items()):
            if self._saved.get(scope) == resource_version:
                continue
            try:
                await self._progress_kv.put(f"rv.{scope}", resource_version.encode())
            except Exception as exc:
                log.warning("could not save watch progress of %s: %s", scope, exc)
                continue
            self._saved[scope] = resource_version
