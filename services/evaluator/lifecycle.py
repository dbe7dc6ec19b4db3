"""The public expiry events of one CertCheck's evaluation (schemas/events.py, docs/events.md).

What each CertCheck last told of its certificate slots is kept in the key-value bucket
``certcheck_event_slots`` (one entry per CertCheck, compressed) and in memory while the evaluator holds
the partition. After an evaluation, the facts between what was told and what was found
(services/domain/lifecycle.py) are published, each with its id as ``Nats-Msg-Id``; only then is the
entry written (at most about once a second per CertCheck). A crash in between derives the same facts
again: same ids, kept once by the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Container
from datetime import datetime

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from schemas.events import CertificateFacts, CertState, ObjectKind, RemovedBecause, cloud_event
from services.common.bus import Bus, publish_pipelined
from services.domain.lifecycle import Fact, Seen, Slot, Watcher, lifecycle_facts
from services.domain.times import rfc3339

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 30.0
# An entry larger than this is not kept in the bucket (a CertCheck of many thousand certificates): its
# facts are then derived against memory only, and a restart says again what it had said (counted).
MAX_ENTRY_BYTES = 900 * 1024
# What a CertCheck told is written at most about this often (see ``_remember``), far inside the events
# stream's one-hour duplicate window: the entry of a CertCheck of 5,000 certificates takes ~35 ms to encode
# and compress (off the event loop, see ``_write``), 262 KiB on the bus.
WRITE_EVERY_SECONDS = 10.0
WRITE_ATTEMPTS = 5

published_events = Counter("certcheck_lifecycle_events_total", "Public expiry events published", ["type"])
untracked = Counter(
    "certcheck_lifecycle_untracked_total", "CertChecks whose told slots were too large to keep durably"
)


class ToldSlot(msgspec.Struct, array_like=True, frozen=True):
    object_kind: ObjectKind
    object_name: str
    object_uid: str
    key: str
    index: int
    state: CertState
    certificate: CertificateFacts | None = None
    reason: str | None = None


class Told(msgspec.Struct, frozen=True):
    """What one CertCheck last told: at which threshold, of which slots."""

    threshold_days: int = 0
    slots: list[ToldSlot] = []

    def seen(self) -> dict[Slot, Seen]:
        return {
            Slot(t.object_kind, t.object_name, t.object_uid, t.key, t.index): Seen(
                t.state, t.certificate, t.reason
            )
            for t in self.slots
        }


_encode = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(Told)


def encode_told(threshold_days: int, told: dict[Slot, Seen]) -> bytes:
    # A slot and what it held, joined, is a ToldSlot as an array: the same bytes without building one.
    slots = [slot + seen for slot, seen in told.items()]
    return zlib.compress(_encode.encode(Told(threshold_days, slots)), 6)  # type: ignore[arg-type]


def decode_told(data: bytes) -> Told:
    return _decode.decode(zlib.decompress(data))


def removal_reason(
    selected_uids: Container[str], exists: Callable[[Slot], bool]
) -> Callable[[Slot], RemovedBecause]:
    """Why a slot told before is gone: its key (the object is still selected), its selection (the
    object is still there), or the object."""

    def why(slot: Slot) -> RemovedBecause:
        if slot.object_uid in selected_uids:
            return "KeyRemoved"
        return "NoLongerSelected" if exists(slot) else "ObjectDeleted"

    return why


class LifecycleEvents:
    """Derives and publishes one evaluator replica's public events, and remembers what it told."""

    def __init__(
        self, bus: Bus, bucket: KeyValue, cluster: str, write_every_seconds: float = WRITE_EVERY_SECONDS
    ) -> None:
        self.bus, self.bucket, self.cluster = bus, bucket, cluster
        self._told: dict[tuple[str, str], tuple[int, dict[Slot, Seen]]] = {}
        self._write_every = write_every_seconds
        self._written_at: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    @staticmethod
    def _key(namespace: str, certcheck: str) -> str:
        return f"{namespace}.{certcheck}"

    async def told(self, namespace: str, certcheck: str) -> tuple[int, dict[Slot, Seen]]:
        """The threshold and the slots a CertCheck last told of (memory, else the bucket)."""
        held = self._told.get((namespace, certcheck))
        if held is not None:
            return held
        try:
            entry = await self.bucket.get(self._key(namespace, certcheck))
            told = decode_told(entry.value) if entry.value else Told()
        except KeyNotFoundError:
            told = Told()
        held = (told.threshold_days, told.seen())
        self._told[(namespace, certcheck)] = held
        return held

    async def after_evaluation(
        self,
        namespace: str,
        certcheck: str,
        threshold_days: int,
        found: dict[Slot, Seen],
        gone: Callable[[Slot], RemovedBecause],
        now: datetime,
        since: tuple[dict[Slot, Seen], set[Slot]] | None = None,
    ) -> int:
        """Publish the facts of this evaluation and remember what was told; how many were published.
        ``since``: an earlier ``found`` and the slots that differ from it (an incremental evaluation's):
        when that is what was told, only those slots are compared."""
        held_threshold, told = await self.told(namespace, certcheck)
        watcher = Watcher(self.cluster, namespace, certcheck, threshold_days)
        changed = since[1] if since is not None and since[0] is told else None
        facts = lifecycle_facts(watcher, told, found, gone, changed)
        if not facts:
            # Nothing differs: hold the equal ``found`` as told, so the next evaluation that starts
            # from it compares only its changes.
            self._told[(namespace, certcheck)] = (held_threshold, found)
            return 0
        await self._publish(facts, now)
        await self._remember(namespace, certcheck, threshold_days, found)
        return len(facts)

    async def certcheck_removed(self, namespace: str, certcheck: str, now: datetime) -> None:
        """Every slot the CertCheck told of is removed with it."""
        threshold_days, told = await self.told(namespace, certcheck)
        watcher = Watcher(self.cluster, namespace, certcheck, threshold_days)
        facts = lifecycle_facts(watcher, told, {}, lambda slot: "CertCheckDeleted")
        if facts:
            await self._publish(facts, now)
        pending = self._pending.pop((namespace, certcheck), None)
        if pending is not None:
            pending.cancel()
        await self.bucket.delete(self._key(namespace, certcheck))
        self._told.pop((namespace, certcheck), None)
        self._written_at.pop((namespace, certcheck), None)

    async def _publish(self, facts: list[Fact], now: datetime) -> None:
        time = rfc3339(now)
        acks = []
        for token, event in facts:
            message = cloud_event(token, event, time)
            acks.append(await publish_pipelined(self.bus, message.subject, message.data, message.headers))
            published_events.labels(token).inc()
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await asyncio.gather(*acks)

    async def _remember(
        self, namespace: str, certcheck: str, threshold_days: int, found: dict[Slot, Seen]
    ) -> None:
        """Hold what was told, and write it to the bucket in the background: at once, or, if it was
        written less than ``write_every`` ago, once that has passed (what memory holds then: a CertCheck
        changing often is written about once per ``write_every``, not rewritten whole at every change).
        The evaluation never waits for it (a CertCheck of thousands of certificates is a few 100 KiB).
        A crash before the write derives the facts since again, under the same ids: the events stream
        keeps them once (its duplicate window is an hour)."""
        key = (namespace, certcheck)
        self._told[key] = (threshold_days, found)
        if key in self._pending:
            return  # the write scheduled takes what memory holds when it runs
        wait = self._written_at.get(key, float("-inf")) + self._write_every - time.monotonic()
        self._pending[key] = asyncio.create_task(self._write_later(key, max(wait, 0.0)), name=f"told-{key}")

    async def flush(self) -> None:
        """Write at once what waits for its interval (a replica handing its partitions over: their next
        holder reads the entries and tells nothing twice)."""
        pending, self._pending = self._pending, {}
        for task in pending.values():
            task.cancel()
        for key in pending:
            await self._write(key)

    async def _write_later(self, key: tuple[str, str], wait: float) -> None:
        try:
            for attempt in range(WRITE_ATTEMPTS):
                await asyncio.sleep(wait)
                try:
                    await self._write(key)
                    return
                except Exception as exc:  # the bus is away: try again, then leave it to the next facts
                    log.warning("CertCheck %s/%s: what it told is not written yet: %s", *key, exc)
                    wait = self._write_every * 2 ** (attempt + 1)
        finally:
            self._pending.pop(key, None)

    async def _write(self, key: tuple[str, str]) -> None:
        held = self._told.get(key)
        if held is None:
            return  # removed meanwhile
        self._written_at[key] = time.monotonic()
        threshold_days, found = held
        # Off the event loop: compressing a CertCheck of thousands of certificates takes tens of ms
        # (zlib lets go of the GIL), which its next changes would otherwise wait for. ``found`` is an
        # evaluation's own copy, never changed after.
        data = await asyncio.to_thread(encode_told, threshold_days, found)
        if len(data) > MAX_ENTRY_BYTES:
            untracked.inc()
            log.warning(
                "CertCheck %s/%s: %d certificate slots are too many to keep durably (%d bytes): "
                "a restart publishes its discoveries again",
                *key,
                len(found),
                len(data),
            )
            return
        await self.bucket.put(self._key(*key), data)
