"""The recorder's bus adapter: takes results from the durable consumer, applies them, then acks.

Results are last-value per CertCheck, so a recorder that falls behind skips straight to the newest one.
Every write is idempotent (patches set absolute values; Events are named by a dedup key). A durable mark
per subject (the stream sequence applied last, in a KV bucket) makes a redelivery after a crash a no-op,
and a small cache of what was written skips repeats across results without a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from schemas import subjects
from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckRemoved,
    EvaluationResult,
    ResultMessage,
    encoder,
    kube_event_decoder,
    result_decoder,
)
from schemas.streams import KUBE_EVENTS, RECORDER_CONSUMER, RECORDER_EVENTS_CONSUMER, RESULTS
from services.common.bus import (
    FETCH_WAIT_SECONDS,
    Bus,
    dead_letter,
    durable_consumer,
    fetch_batch,
    held,
    redelivery_delay,
)
from services.common.kube_writer import Gone, KubeWriter
from services.common.settings import Settings

log = logging.getLogger(__name__)

BATCH = 200
MAX_DELIVERIES = 20  # then the result goes to the dead-letter stream (a newer one supersedes it anyway)
applied = Counter("certcheck_recorder_results_total", "Results handled", ["kind", "outcome"])
event_writes = Counter(
    "certcheck_recorder_events_total", "Kubernetes Events handled", ["outcome"]
)  # created, aggregated, duplicate, retry
# An Event whose write keeps failing is retried every EVENT_RETRY_CAP_SECONDS for about a day, then parked.
EVENT_RETRY_CAP_SECONDS = 300.0
MAX_EVENT_DELIVERIES = 300


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Recorder:
    def __init__(self, bus: Bus, writer: KubeWriter, settings: Settings, applied: KeyValue) -> None:
        self.bus = bus
        self.applied = applied
        self.writer = writer
        self._pool = ThreadPoolExecutor(settings.write_concurrency, thread_name_prefix="kube-write")
        self._limit = asyncio.Semaphore(settings.write_concurrency * 2)
        self._written_status = _Lru(10_000)
        self._written_annotations = _Lru(200_000)

    async def _call(self, fn: Any, *args: Any) -> Any:
        async with self._limit:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self) -> None:
        sub = await durable_consumer(self.bus, RESULTS.name, RECORDER_CONSUMER)
        while True:
            msgs = await fetch_batch(sub, BATCH, wait=FETCH_WAIT_SECONDS)
            newest: dict[str, Msg] = {}
            for msg in msgs:
                older = newest.get(msg.subject)
                if older is not None:
                    await older.ack()  # superseded within the batch
                newest[msg.subject] = msg
            async with held(list(newest.values())):
                await asyncio.gather(*(self._handle(msg) for msg in newest.values()))

    async def _handle(self, msg: Msg) -> None:
        try:
            result = result_decoder.decode(msg.data)
        except Exception as exc:
            applied.labels("unknown", "undecodable").inc()
            await dead_letter(self.bus, msg, f"undecodable result: {exc}", "undecodable")
            return
        kind = type(result).__name__
        seq = msg.metadata.sequence.stream
        mark = msg.subject.removeprefix("certcheck.v1.")
        try:
            if await self._applied_up_to(mark) >= seq:  # a redelivery of what was already applied
                applied.labels(kind, "duplicate").inc()
                await msg.ack()
                return
            await self.apply(result)
            await self.applied.put(mark, str(seq).encode())
        except Exception as exc:
            if (msg.metadata.num_delivered or 0) >= MAX_DELIVERIES:
                await dead_letter(
                    self.bus, msg, f"still failing after {MAX_DELIVERIES} attempts: {exc}", "failing"
                )
                return
            delay = redelivery_delay(msg)
            log.warning("applying %s failed, retrying in %.1fs: %s", msg.subject, delay, exc)
            applied.labels(kind, "retry").inc()
            await msg.nak(delay=delay)
            return
        applied.labels(kind, "ok").inc()
        await msg.ack()

    # --- Events ------------------------------------------------------------------------------------

    async def run_events(self) -> None:
        """Write the Events the evaluator queued, each on its own: one that fails is retried with
        backoff for as long as EVENT_RETRY_HOURS, whatever happens to the results meanwhile."""
        sub = await durable_consumer(
            self.bus, KUBE_EVENTS.name, RECORDER_EVENTS_CONSUMER, subjects.KUBE_EVENTS_ALL
        )
        while True:
            msgs = await fetch_batch(sub, BATCH, wait=FETCH_WAIT_SECONDS)
            async with held(msgs):
                await asyncio.gather(*(self._write_event(msg) for msg in msgs))

    async def _write_event(self, msg: Msg) -> None:
        try:
            intent = kube_event_decoder.decode(msg.data)
        except Exception as exc:
            await dead_letter(self.bus, msg, f"undecodable Event: {exc}", "undecodable")
            return
        try:
            outcome = await self._call(self.writer.emit_event, intent)
        except Exception as exc:
            deliveries = msg.metadata.num_delivered or 1
            if deliveries >= MAX_EVENT_DELIVERIES:
                reason = f"Event not written after {deliveries} attempts: {exc}"
                await dead_letter(self.bus, msg, reason, "failing")
                return
            delay = redelivery_delay(msg, cap=EVENT_RETRY_CAP_SECONDS)
            log.warning("writing Event %s failed, retrying in %.0fs: %s", msg.subject, delay, exc)
            event_writes.labels("retry").inc()
            await msg.nak(delay=delay)
            return
        event_writes.labels(outcome).inc()
        await msg.ack()

    async def _applied_up_to(self, mark: str) -> int:
        try:
            entry = await self.applied.get(mark)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def apply(self, result: ResultMessage) -> None:
        if isinstance(result, EvaluationResult):
            await self._apply_evaluation(result)
        elif isinstance(result, AnnotationCleanup):
            await self._annotate(result.patch)
        elif isinstance(result, CertCheckRemoved):
            self._written_status.pop((result.namespace, result.name), None)

    async def _apply_evaluation(self, result: EvaluationResult) -> None:
        await asyncio.gather(*(self._annotate(patch) for patch in result.annotation_patches))
        status_key = (result.namespace, result.name)
        # Skipped only as a repeat of what this recorder wrote from the same observed CertCheck: a status
        # edited by hand since comes with a newer resourceVersion and is put back.
        fingerprint = (result.uid, result.resource_version, encoder.encode(result.status))
        if result.status_changed and self._written_status.get(status_key) != fingerprint:
            try:
                await self._call(
                    self.writer.patch_status, result.namespace, result.name, result.uid, result.status
                )
            except Gone:
                pass  # the CertCheck went; its Events are still sent, as before
            else:
                self._written_status.put(status_key, fingerprint)

    async def _annotate(self, patch: AnnotationPatch) -> None:
        """Write the patch, unless this recorder wrote these values already from the same observed
        Secret (the evaluator computed it again before the watcher saw the write). A patch from a newer
        observation is a repair of a hand edit and is always written."""
        key = (patch.namespace, patch.name, patch.uid)
        seen_at, written = self._written_annotations.get(key, ("", {}))
        if seen_at != patch.resource_version:
            written = {}
        if patch.resource_version and all(
            written.get(k, "<unknown>") == v for k, v in patch.annotations.items()
        ):
            return
        try:
            await self._call(self.writer.patch_annotations, patch)
        except Gone:
            return
        self._written_annotations.put(key, (patch.resource_version, {**written, **patch.annotations}))
