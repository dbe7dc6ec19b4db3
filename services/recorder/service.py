"""The recorder's bus adapter: takes results from the durable consumer, applies them, then acks.

Results are last-value per CertCheck, so a recorder that falls behind skips straight to the newest one.
Every write is idempotent (patches set absolute values; Events are named by a dedup key). A durable mark
per subject (the stream sequence applied last, in a KV bucket) makes a redelivery after a crash a no-op,
and a small cache of what was written skips repeats across results without a request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

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
    EventIntent,
    ResultMessage,
    encoder,
    kube_event_decoder,
    result_decoder,
)
from schemas.streams import KUBE_EVENTS, RECORDER_CONSUMER, RECORDER_EVENTS_CONSUMER, RESULTS, AppliedMark
from services.common.bus import Bus
from services.common.consume import (
    FETCH_WAIT_SECONDS,
    Outcome,
    Policy,
    consume,
    dead_letter,
    durable_consumer,
    fetch_batch,
    settle,
)
from services.common.kube_writer import Gone, KubeWriter, StatusWrite
from services.common.logs import object_ref, trace
from services.common.settings import Settings
from services.domain.clusterchecks import cluster_check_of
from services.domain.provenance import event_refusal, result_refusal
from services.recorder.budget import EventBudget
from services.recorder.shares import ClusterStatuses

log = logging.getLogger(__name__)

BATCH = 200
MAX_IN_FLIGHT = 1000  # results being applied or waiting for their subject: beyond, fetching pauses
MAX_DELIVERIES = 20  # then the result goes to the dead-letter stream (a newer one supersedes it anyway)
applied = Counter("certcheck_recorder_results_total", "Results handled", ["kind", "outcome"])
event_writes = Counter(
    "certcheck_recorder_events_total", "Kubernetes Events handled", ["outcome"]
)  # created, aggregated, duplicate, retry, failing, undecodable, held_back (a mass rotation's routine
# Events, see budget.py)
# An Event whose write keeps failing is retried every EVENT_RETRY_CAP_SECONDS for about a day, then parked.
EVENT_RETRY_CAP_SECONDS = 300.0
MAX_EVENT_DELIVERIES = 300
RESULTS_POLICY = Policy("result", max_deliveries=MAX_DELIVERIES)
EVENTS_POLICY = Policy("Event", max_deliveries=MAX_EVENT_DELIVERIES, retry_cap=EVENT_RETRY_CAP_SECONDS)


def _count_event(outcome: Outcome) -> None:
    if outcome not in ("ok", "later"):  # a written Event is counted by what the API server made of it
        event_writes.labels(outcome).inc()


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class _Taken:
    """A result message as fetched, decoded once."""

    msg: Msg
    result: ResultMessage | None  # None: undecodable
    error: str = ""
    refusal: str | None = None  # why the result does not match its subject (then nothing is applied)

    @property
    def kind(self) -> str:
        return type(self.result).__name__

    @property
    def redelivered(self) -> bool:
        return (self.msg.metadata.num_delivered or 1) > 1


def _decoded(msg: Msg) -> _Taken:
    try:
        result = result_decoder.decode(msg.data)
    except Exception as exc:
        return _Taken(msg, None, str(exc))
    return _Taken(msg, result, refusal=result_refusal(msg.subject, result))


def _writes_beyond_its_patches(result: ResultMessage) -> bool:
    """Whether applying ``result`` writes more than its annotation patches."""
    if isinstance(result, AnnotationCleanup):
        return False
    if isinstance(result, EvaluationResult):
        return result.status_changed or cluster_check_of(result.name) is not None
    return True


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[Any], object], arg: Any) -> None:
    """Call ``fn(arg)`` on the loop, from a pool thread; nothing once the loop has closed."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, arg)


class KeyedLock:
    """One asyncio lock per key, held only while someone uses it: writes to one object go out one at
    a time, in the order they were started."""

    def __init__(self) -> None:
        self._locks: dict[object, tuple[asyncio.Lock, int]] = {}

    def __call__(self, key: object) -> _Held:
        return _Held(self._locks, key)


class _Held:
    """Holding one key's lock (a class, not a generator: entered for every annotation patch)."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[object, tuple[asyncio.Lock, int]], key: object) -> None:
        self._locks, self._key = locks, key
        lock, users = locks.get(key) or (asyncio.Lock(), 0)
        locks[key] = (lock, users + 1)
        self._lock = lock

    async def __aenter__(self) -> None:
        try:
            await self._lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)


async def _settled(writes: set[asyncio.Task[None]]) -> None:
    """Until every write has ended; then raises the first failure."""
    if writes:
        await asyncio.wait(writes)
    for task in writes:
        if task.cancelled():
            raise RuntimeError("an annotation write was cancelled")
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


class Recorder:
    def __init__(
        self,
        bus: Bus,
        writer: KubeWriter,
        settings: Settings,
        applied: KeyValue,
        cluster_shares: KeyValue | None = None,
    ) -> None:
        self.bus = bus
        self.applied = applied
        self.writer = writer
        self._pool = ThreadPoolExecutor(settings.write_concurrency, thread_name_prefix="kube-write")
        self._calls: set[concurrent.futures.Future[Any]] = set()  # submitted to the pool, not yet ended
        self._limit = asyncio.Semaphore(settings.write_concurrency * 2)
        self._starts = asyncio.Semaphore(settings.write_concurrency * 4)  # annotation writes started early
        self._written_status = _Lru(10_000)  # per CertCheck: (what was written from what, the version made)
        self._status_fields = _Lru(10_000)  # per CertCheck: (uid, the status fields it holds since our write)
        self._written_annotations = _Lru(200_000)
        # Per Secret, the patch being written and its write (one at a time per Secret: see _annotate).
        self._writing: dict[tuple[str, str, str], tuple[AnnotationPatch, asyncio.Task[None]]] = {}
        self._busy: set[str] = set()  # subjects with a result being applied
        self._waiting: dict[str, _Taken] = {}  # per busy subject, the newest result that came since
        self._in_flight = 0  # results being applied or waiting
        # Per subject, the stream sequence of the last result whose patches are being started early.
        self._arrived: dict[str, int] = {}
        self._room = asyncio.Condition()
        self._one_secret_at_a_time = KeyedLock()
        self._event_budget = EventBudget(settings.event_burst, settings.event_refill_seconds)
        # ClusterCertChecks' statuses, merged from their shares' results (None: not recorded).
        self.cluster = ClusterStatuses(bus, cluster_shares, writer, self._call) if cluster_shares else None

    async def _call(self, fn: Any, *args: Any) -> Any:
        async with self._limit:
            loop = asyncio.get_running_loop()
            call = self._pool.submit(fn, *args)
            self._calls.add(call)
            call.add_done_callback(lambda done: _on_loop(loop, self._calls.discard, done))
            return await asyncio.wrap_future(call)

    async def _writes_of_the_last_run(self) -> None:
        """Until every write a failed run left in the thread pool has ended (a thread cannot be
        cancelled): one of them may be a status write, and the next run writing the same status anew
        before it lands would see its newer value set back by the older one."""
        if self._calls:
            await asyncio.wait([asyncio.wrap_future(call) for call in list(self._calls)])

    async def run(self) -> None:
        """Apply results as they come, one at a time per subject. A result that arrives while the one
        before it on its subject is still being written waits, and only the newest waiting one is
        applied (each result is complete), so a CertCheck changing faster than its status can be
        written gets as many status writes as the API server takes, no more; its annotation patches
        are started at once, so no Secret waits for a status write."""
        await self._writes_of_the_last_run()
        sub = await durable_consumer(self.bus, RESULTS.name, RECORDER_CONSUMER)
        self._busy, self._waiting, self._in_flight = set(), {}, 0  # what a failed run held is redelivered
        async with asyncio.TaskGroup() as tasks:
            while True:
                async with self._room:
                    await self._room.wait_for(lambda: self._in_flight <= MAX_IN_FLIGHT - BATCH)
                for msg in await fetch_batch(sub, BATCH, wait=FETCH_WAIT_SECONDS):
                    await self._take(msg, tasks)

    async def _take(self, msg: Msg, tasks: asyncio.TaskGroup) -> None:
        taken = _decoded(msg)
        usable = taken.refusal is None and not taken.redelivered
        subject = msg.subject
        if usable and isinstance(taken.result, EvaluationResult | AnnotationCleanup):
            seq = msg.metadata.sequence.stream
            self._arrived[subject] = seq
            tasks.create_task(self._annotate_all(taken.result, subject, seq))  # applied again in order
        if subject not in self._busy:
            self._busy.add(subject)
            self._in_flight += 1
            tasks.create_task(self._drive(subject, taken))
            return
        superseded = self._waiting.get(subject)
        self._waiting[subject] = taken
        if superseded is None:
            self._in_flight += 1
        else:
            applied.labels(superseded.kind, "superseded").inc()
            await superseded.msg.ack()

    async def _drive(self, subject: str, taken: _Taken | None) -> None:
        """Apply the results of one subject in turn until none waits."""
        try:
            while taken is not None:
                await self._handle(taken)
                taken = self._waiting.pop(subject, None)
                if taken is not None:
                    await self._done()
        finally:
            self._busy.discard(subject)
            await self._done()

    async def _done(self) -> None:
        async with self._room:
            self._in_flight -= 1
            self._room.notify_all()

    async def _handle(self, taken: _Taken) -> None:
        msg, result = taken.msg, taken.result
        if result is None:
            applied.labels("unknown", "undecodable").inc()
            await dead_letter(self.bus, msg, f"undecodable result: {taken.error}", "undecodable")
            return
        if taken.refusal is not None:
            applied.labels(taken.kind, "refused").inc()
            await dead_letter(self.bus, msg, f"refused result: {taken.refusal}", "refused")
            return
        outcome = await settle(self.bus, [msg], self._apply_once(taken, result), RESULTS_POLICY)
        if outcome != "ok":
            applied.labels(taken.kind, outcome).inc()

    async def _apply_once(self, taken: _Taken, result: ResultMessage) -> None:
        """Apply a result unless the durable mark says it was, and move the mark past it."""
        msg, kind = taken.msg, taken.kind
        seq = msg.metadata.sequence.stream
        mark = subjects.applied_mark(msg.subject)
        # A result delivered for the first time had its annotation patches started as it arrived (_take),
        # mark or no mark: unless applying it writes more (a status), reading the mark would spare nothing
        # (a cold start of a CertCheck too large for one result sends thousands of clean-ups; most
        # changes leave the status as it is).
        look = taken.redelivered or _writes_beyond_its_patches(result)
        if look and await self._applied_up_to(mark) >= seq:  # a redelivery of what was already applied
            applied.labels(kind, "duplicate").inc()
            return
        written_at = await self.apply(result)
        # With the resourceVersion its status write made, if it made one: the evaluator tells a status
        # not yet seen since from one set back (services/evaluator/statuswatch.py).
        await self.applied.put(mark, AppliedMark(seq, written_at or "").encode())
        applied.labels(kind, "ok").inc()

    # --- Events ------------------------------------------------------------------------------------

    async def run_events(self) -> None:
        """Write the Events the evaluator queued, each on its own: one that fails is retried with
        backoff for about a day (MAX_EVENT_DELIVERIES), whatever happens to the results meanwhile."""
        sub = await durable_consumer(
            self.bus, KUBE_EVENTS.name, RECORDER_EVENTS_CONSUMER, subjects.KUBE_EVENTS_ALL
        )
        await consume(
            self.bus,
            sub,
            kube_event_decoder.decode,
            self._write_event,
            EVENTS_POLICY,
            batch=BATCH,
            counted=_count_event,
            admit=event_refusal,
        )

    async def _write_event(self, intent: EventIntent, msg: Msg) -> None:
        if not self._event_budget.allows(intent, time.monotonic()):
            event_writes.labels("held_back").inc()  # the CertCheck's summary Event counts it
            return
        outcome = await self._call(self.writer.emit_event, intent)
        event_writes.labels(outcome).inc()
        ref = object_ref(intent.namespace, intent.involved_name)
        trace(log, "recorder", ref, "%s Event %s: %s", intent.involved_kind, intent.reason, outcome)

    async def _applied_up_to(self, mark: str) -> int:
        try:
            entry = await self.applied.get(mark)
        except KeyNotFoundError:
            return 0
        return AppliedMark.decode(entry.value).seq

    async def apply(self, result: ResultMessage) -> str | None:
        """Apply the result; the resourceVersion its status write made, if it made one."""
        if isinstance(result, EvaluationResult):
            return await self._apply_evaluation(result)
        if isinstance(result, AnnotationCleanup):
            await self._annotate(result.patch)
        elif isinstance(result, CertCheckRemoved):
            if cluster_check_of(result.name) is not None:
                if self.cluster is not None:
                    await self.cluster.remove(result)
                return None
            self._written_status.pop((result.namespace, result.name), None)
            self._status_fields.pop((result.namespace, result.name), None)
        return None

    async def _annotate_all(
        self, result: EvaluationResult | AnnotationCleanup, subject: str, seq: int
    ) -> None:
        """A result's annotation patches, started as it arrives; a failure is left to its turn. Once a
        newer result came on its subject, it starts no more (that one is complete: it has every patch
        still to write, with the newest values), and once it starts no more it lets go of the result:
        on a CertCheck of thousands of Secrets each result repeats thousands of patches (~10 MiB
        decoded), and dozens of them waited here for slots."""

        def superseded() -> bool:
            return self._arrived.get(subject) != seq

        patches = result.annotation_patches if isinstance(result, EvaluationResult) else [result.patch]
        started = await self._started(patches, superseded)
        del result, patches
        if not superseded():
            del self._arrived[subject]
        with contextlib.suppress(Exception):
            await _settled(started)

    async def _annotate_many(self, patches: Iterable[AnnotationPatch]) -> None:
        """Write the patches this recorder has not written already (see ``_started``). Raises the first
        failure, after all."""
        await _settled(await self._started(patches))

    async def _started(
        self, patches: Iterable[AnnotationPatch], stop: Callable[[], bool] = lambda: False
    ) -> set[asyncio.Task[None]]:
        """The writes of the patches this recorder has not written already, started as many at once as
        there are slots (a cold start brings thousands: each one started would hold a task until the
        writers get to it), until ``stop()`` says to start no more. A patch already being written (from
        an earlier result, or this one's early start) is waited for, not started again."""
        running: set[asyncio.Task[None]] = set()
        joined: set[asyncio.Task[None]] = set()
        for patch in patches:
            # A result is complete: on a CertCheck of thousands of Secrets, each result until the
            # annotations come back repeats the patches written, or being written, from the ones before.
            if self._written_already(patch) or self._join(patch, joined):
                continue
            if stop():
                break
            await self._starts.acquire()
            if stop():  # while waiting for the slot
                self._starts.release()
                break
            if self._written_already(patch) or self._join(patch, joined):
                self._starts.release()
                continue
            running.add(self._start_write(patch))
        return running | joined

    def _join(self, patch: AnnotationPatch, joined: set[asyncio.Task[None]]) -> bool:
        """Whether this very patch is being written; then its write is added to ``joined``."""
        writing = self._writing.get((patch.namespace, patch.name, patch.uid))
        if writing is None or writing[0] != patch:
            return False
        joined.add(writing[1])
        return True

    def _start_write(self, patch: AnnotationPatch) -> asyncio.Task[None]:
        """Start writing ``patch`` in a slot taken for it; the slot is given back when the write ends."""
        key = (patch.namespace, patch.name, patch.uid)
        task = asyncio.ensure_future(self._annotate(patch))
        self._writing[key] = (patch, task)

        def finished(task: asyncio.Task[None]) -> None:  # a finished write keeps nothing alive
            self._starts.release()
            if self._writing.get(key, (None, None))[1] is task:
                del self._writing[key]

        task.add_done_callback(finished)
        return task

    async def _apply_evaluation(self, result: EvaluationResult) -> str | None:
        # Those written since the result arrived (``_annotate_all``) are skipped, those still being
        # written are waited for.
        await self._annotate_many(result.annotation_patches)
        if cluster_check_of(result.name) is not None:  # a ClusterCertCheck's share of a namespace
            if self.cluster is not None:
                await self.cluster.record(result)
            return None
        status_key = (result.namespace, result.name)
        # Skipped only as a repeat of what this recorder wrote from the same observed CertCheck: a status
        # edited by hand since comes with a newer resourceVersion and is put back.
        fingerprint = (result.uid, result.resource_version, encoder.encode(result.status))
        repeated, version = self._written_status.get(status_key, (None, ""))
        if result.status_changed and repeated == fingerprint:
            return cast(str, version)  # the version that write made: its echo may be on its way
        if result.status_changed:
            written_uid, present = self._status_fields.get(status_key, ("", None))
            try:
                written: StatusWrite = await self._call(
                    self.writer.patch_status,
                    result.namespace,
                    result.name,
                    result.uid,
                    result.status,
                    present if written_uid == result.uid else None,
                )
            except Gone:
                return None  # the CertCheck went; its Events are still sent, as before
            self._written_status.put(status_key, (fingerprint, written.resource_version))
            self._status_fields.put(status_key, (result.uid, written.holds))
            ref = object_ref(result.namespace, result.name, result.resource_version)
            trace(log, "recorder", ref, "status written (evaluated from view message %d)", result.view_seq)
            return written.resource_version
        return None

    async def _annotate(self, patch: AnnotationPatch) -> None:
        """Write the patch, unless this recorder wrote these values already from the same observed
        Secret (the evaluator computed it again before the watcher saw the write). A patch from a newer
        observation is a repair of a hand edit and is always written."""
        key = (patch.namespace, patch.name, patch.uid)
        async with self._one_secret_at_a_time(key):
            await self._annotate_alone(key, patch)

    def _written_values(self, patch: AnnotationPatch) -> dict[str, str | None]:
        """What this recorder wrote on the Secret from the same observed version as ``patch``."""
        seen_at, written = self._written_annotations.get((patch.namespace, patch.name, patch.uid), ("", {}))
        return written if seen_at == patch.resource_version else {}

    def _written_already(self, patch: AnnotationPatch) -> bool:
        """Whether this recorder wrote these values from the same observed Secret."""
        if not patch.resource_version:
            return False
        written = self._written_values(patch)
        # Mostly the very values written (compared at C speed); else a subset of what was written.
        return written == patch.annotations or all(
            written.get(k, "<unknown>") == v for k, v in patch.annotations.items()
        )

    async def _annotate_alone(self, key: tuple[str, str, str], patch: AnnotationPatch) -> None:
        ref = object_ref(patch.namespace, patch.name, patch.resource_version)
        if self._written_already(patch):
            trace(log, "recorder", ref, "annotations written already")
            return
        written = self._written_values(patch)
        try:
            await self._call(self.writer.patch_annotations, patch)
        except Gone:
            trace(log, "recorder", ref, "gone: not annotated")
            return
        trace(log, "recorder", ref, "annotated: %s", patch.annotations)
        self._written_annotations.put(key, (patch.resource_version, {**written, **patch.annotations}))
