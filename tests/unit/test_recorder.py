"""The recorder applies results one at a time per subject and only the newest waiting one, while every
result's annotation patches go out as it arrives. The bus and the API server are recording fakes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckStatus,
    EvaluationResult,
    EventIntent,
    encoder,
    kube_event_decoder,
    result_decoder,
)
from services.common.consume import handle_one
from services.common.kube_writer import StatusWrite
from services.common.settings import Settings
from services.recorder.service import EVENTS_POLICY, KeyedLock, Recorder
from tests.fakes import FakeBus, FakeKeyValue, FakeMsg

STATE = "certcheck.dev/state"
SUBJECT = "certcheck.v1.results.ns.check"


class SlowStatusWriter:
    """Annotation patches return at once; a status patch waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.annotated: list[str] = []
        self.statuses: list[int] = []

    def patch_annotations(self, patch: AnnotationPatch) -> None:
        self.annotated.append(patch.name)

    def patch_status(
        self, namespace: str, name: str, uid: str, status: CertCheckStatus, present: object = None
    ) -> StatusWrite:
        assert self.release.wait(10)
        self.statuses.append(status.target_secrets_count)
        return StatusWrite(frozenset(), str(100 + len(self.statuses)))


def annotated(secret: str) -> AnnotationPatch:
    return AnnotationPatch("ns", secret, f"uid-{secret}", {STATE: "Valid"}, "1")


def evaluation(seq: int, *secrets: str) -> FakeMsg:
    """The seq-th evaluation of one CertCheck: a status counting ``seq``, and the Secrets to annotate."""
    result = EvaluationResult(
        namespace="ns",
        name="check",
        uid="uid-check",
        generation=1,
        evaluated_at="2026-12-03T00:00:00Z",
        view_seq=seq,
        status=CertCheckStatus(target_secrets_count=seq),
        status_changed=True,
        annotation_patches=[annotated(secret) for secret in secrets],
    )
    return FakeMsg(SUBJECT, encoder.encode(result), seq)


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_results_during_a_status_write_are_annotated_at_once_and_only_the_newest_status_follows() -> (
    None
):
    writer = SlowStatusWriter()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    # Complete results, as the evaluator publishes them: each repeats the patches not yet seen applied.
    first, second, third = evaluation(1, "s1"), evaluation(2, "s1", "s2"), evaluation(3, "s1", "s2", "s3")
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(first, tasks)
        await eventually(lambda: writer.annotated == ["s1"])
        await recorder._take(second, tasks)
        await recorder._take(third, tasks)
        await eventually(lambda: sorted(writer.annotated) == ["s1", "s2", "s3"])
        assert writer.statuses == []  # the first status write is still in flight
        assert second.acked  # superseded by the third while it waited
        writer.release.set()
        await eventually(lambda: first.acked and third.acked)
    assert writer.statuses == [1, 3]
    assert recorder._in_flight == 0


async def test_writes_to_one_key_go_out_one_at_a_time_in_the_order_they_were_started() -> None:
    lock = KeyedLock()
    order: list[str] = []

    async def write(name: str, key: str, pause: float) -> None:
        async with lock(key):
            order.append(f"{name} start")
            await asyncio.sleep(pause)
            order.append(f"{name} end")

    await asyncio.gather(write("a", "k", 0.05), write("b", "k", 0), write("other", "j", 0))
    assert order.index("a end") < order.index("b start")
    assert order.index("other start") < order.index("a end")  # another key does not wait
    assert not lock._locks


class RecordingEventWriter:
    def __init__(self) -> None:
        self.events: list[EventIntent] = []

    def emit_event(self, intent: EventIntent) -> str:
        self.events.append(intent)
        return "created"


def event_message(seq: int, type_: str, kind: str = "Secret") -> FakeMsg:
    intent = EventIntent(
        namespace="ns",
        involved_api_version="v1",
        involved_kind=kind,
        involved_name=f"s{seq}",
        involved_uid=f"uid-{seq}",
        type=type_,
        reason="Renewed" if type_ == "Normal" else "Expired",
        message="m",
        dedup_key=f"k{seq}",
    )
    return FakeMsg(f"certcheck.v1.kubeevents.ns.k{seq}", encoder.encode(intent), seq)


async def test_a_mass_rotation_writes_a_burst_of_renewed_events_and_every_warning() -> None:
    writer = RecordingEventWriter()
    settings = dataclasses.replace(Settings(), event_burst=5, event_refill_seconds=3600)
    recorder = Recorder(SimpleNamespace(), writer, settings, FakeKeyValue())  # type: ignore[arg-type]
    renewed = [event_message(i, "Normal") for i in range(20)]
    warnings = [event_message(100 + i, "Warning") for i in range(20)]
    summaries = [event_message(200 + i, "Normal", kind="CertCheck") for i in range(3)]
    for msg in [*renewed, *warnings, *summaries]:
        await handle_one(FakeBus(), msg, kube_event_decoder.decode, recorder._write_event, EVENTS_POLICY)  # type: ignore[arg-type]
    written = [(e.type, e.involved_kind) for e in writer.events]
    assert written.count(("Normal", "Secret")) == 5
    assert written.count(("Warning", "Secret")) == 20
    assert written.count(("Normal", "CertCheck")) == 3
    assert all(msg.acked for msg in [*renewed, *warnings, *summaries])  # held back is done, not retried


class BlockedAnnotationWriter:
    """Every annotation patch waits until ``release`` is set; counts the patches written."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.annotated: list[str] = []
        self.lock = threading.Lock()

    def patch_annotations(self, patch: AnnotationPatch) -> None:
        assert self.release.wait(10)
        with self.lock:
            self.annotated.append(patch.name)

    def patch_status(self, *args: object, **kwargs: object) -> StatusWrite:
        return StatusWrite(frozenset(), "")


async def test_a_result_with_thousands_of_patches_starts_only_as_many_writes_as_there_are_slots() -> None:
    writer = BlockedAnnotationWriter()
    settings = dataclasses.replace(Settings(), write_concurrency=4)
    recorder = Recorder(SimpleNamespace(), writer, settings, FakeKeyValue())  # type: ignore[arg-type]
    secrets = [f"s{i}" for i in range(2000)]
    message = evaluation(1, *secrets)
    before = len(asyncio.all_tasks())
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(message, tasks)
        await asyncio.sleep(0.2)
        # Started early, and again by the result's own turn: each bounded by the 16 slots.
        assert len(asyncio.all_tasks()) - before <= 2 * 16 + 4
        writer.release.set()
        await eventually(lambda: message.acked, timeout=30)
    assert sorted(writer.annotated) == sorted(secrets)  # each once


def started_writes(recorder: Recorder) -> list[str]:
    """The Secrets whose annotation write the recorder starts from now on, in order."""
    started: list[str] = []
    annotate = recorder._annotate

    async def counted(patch: AnnotationPatch) -> None:
        started.append(patch.name)
        await annotate(patch)

    recorder._annotate = counted  # type: ignore[method-assign]
    return started


async def test_patches_written_already_from_the_same_observed_secret_start_no_write() -> None:
    writer = SlowStatusWriter()
    writer.release.set()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    started = started_writes(recorder)
    secrets = [f"s{i}" for i in range(100)]
    first, second = evaluation(1, *secrets), evaluation(2, *secrets, "new")
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(first, tasks)
        await eventually(lambda: first.acked)
        started.clear()
        await recorder._take(second, tasks)  # a complete result: the same 100 patches, and one more
        await eventually(lambda: second.acked)
    assert set(started) == {"new"}  # started early, and again by the result's turn (found written then)
    assert sorted(writer.annotated) == sorted([*secrets, "new"])


async def test_a_patch_being_written_is_waited_for_not_written_again_by_the_results_after_it() -> None:
    writer = BlockedAnnotationWriter()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    started = started_writes(recorder)
    secrets = [f"s{i}" for i in range(300)]
    results = [evaluation(seq, *secrets) for seq in (1, 2, 3)]  # complete results, the same patches
    async with asyncio.TaskGroup() as tasks:
        for message in results:
            await recorder._take(message, tasks)
        await asyncio.sleep(0.2)
        writer.release.set()
        await eventually(lambda: all(m.acked for m in results), timeout=30)
    assert sorted(started) == sorted(secrets)  # each started once, by the first result's early start
    assert sorted(writer.annotated) == sorted(secrets)
    assert not recorder._writing


def results_alive(evaluated_at: str) -> list[int]:
    """The view sequences of the decoded EvaluationResults evaluated at that moment still held anywhere."""
    gc.collect()
    return sorted(
        o.view_seq
        for o in gc.get_objects()
        if isinstance(o, EvaluationResult) and o.evaluated_at == evaluated_at
    )


def evaluated_at(message: FakeMsg, moment: str) -> FakeMsg:
    """The same evaluation, as evaluated at ``moment`` (to tell its decoded copies from other tests')."""
    result = msgspec.structs.replace(result_decoder.decode(message.data), evaluated_at=moment)
    return FakeMsg(SUBJECT, encoder.encode(result), message.seq)


async def test_a_result_whose_patches_are_being_written_is_let_go_of_until_its_turn() -> None:
    """On a CertCheck of thousands of Secrets, each result repeats the patches still being written: one
    superseded before its turn is held by nothing once its patches are started or joined."""
    writer = BlockedAnnotationWriter()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    secrets = [f"s{i}" for i in range(300)]
    moment = "2026-12-07T18:00:00Z"
    results = [evaluated_at(evaluation(seq, *secrets), moment) for seq in (1, 2, 3)]
    async with asyncio.TaskGroup() as tasks:
        for message in results:
            await recorder._take(message, tasks)
        await asyncio.sleep(0.2)
        # 1 is being applied, 3 waits for its turn; 2 was superseded by 3 and is written by nobody.
        assert results_alive(moment) == [1, 3]
        writer.release.set()
        await eventually(lambda: all(m.acked for m in results), timeout=30)
    assert sorted(writer.annotated) == sorted(secrets)


class FailingAnnotationWriter(BlockedAnnotationWriter):
    def patch_annotations(self, patch: AnnotationPatch) -> None:
        assert self.release.wait(10)
        raise OSError("the API server is down")


async def test_a_result_that_waited_for_a_write_that_failed_is_not_acknowledged() -> None:
    writer = FailingAnnotationWriter()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    message = evaluation(1, "s1")
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(message, tasks)  # started early; the result's turn waits for that write
        await asyncio.sleep(0.1)
        writer.release.set()
        await eventually(lambda: message.naked)
    assert not message.acked


class RecordingAnnotationWriter(SlowStatusWriter):
    def __init__(self) -> None:
        super().__init__()
        self.release.set()


class CountingKeyValue(FakeKeyValue):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str) -> Any:
        self.gets += 1
        return await super().get(key)


def cleanup(seq: int, secret: str, delivered: int = 1) -> FakeMsg:
    message = AnnotationCleanup(view_seq=seq, patch=annotated(secret))
    return FakeMsg(f"certcheck.v1.cleanup.ns.{secret}", encoder.encode(message), seq, delivered=delivered)


async def test_a_clean_up_delivered_the_first_time_is_written_without_reading_its_applied_mark() -> None:
    writer, marks = RecordingAnnotationWriter(), CountingKeyValue()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), marks)  # type: ignore[arg-type]
    first = cleanup(7, "s1")
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(first, tasks)
        await eventually(lambda: first.acked)
    assert writer.annotated == ["s1"]
    assert marks.gets == 0
    assert marks.entries["cleanup.ns.s1"].value == b"7"  # a redelivery finds it applied


async def test_a_clean_up_delivered_again_after_it_was_applied_writes_nothing() -> None:
    writer, marks = RecordingAnnotationWriter(), CountingKeyValue()
    await marks.put("cleanup.ns.s1", b"7")
    recorder = Recorder(SimpleNamespace(), writer, Settings(), marks)  # type: ignore[arg-type]
    again = cleanup(7, "s1", delivered=2)  # applied, then the process died before its ack
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(again, tasks)
        await eventually(lambda: again.acked)
    assert writer.annotated == []
    assert marks.gets == 1


async def test_a_result_that_leaves_the_status_as_it_is_reads_no_mark_and_one_that_writes_it_does() -> None:
    writer, marks = RecordingAnnotationWriter(), CountingKeyValue()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), marks)  # type: ignore[arg-type]
    unchanged = evaluation(1, "s1")
    quiet = result_decoder.decode(unchanged.data)
    unchanged.data = encoder.encode(msgspec.structs.replace(quiet, status_changed=False))
    async with asyncio.TaskGroup() as tasks:
        await recorder._take(unchanged, tasks)
        await eventually(lambda: unchanged.acked)
        assert (writer.annotated, writer.statuses, marks.gets) == (["s1"], [], 0)
        changed = evaluation(2, "s1")
        await recorder._take(changed, tasks)
        await eventually(lambda: changed.acked)
    assert (writer.statuses, marks.gets) == ([2], 1)
    # With the version the status write made: the evaluator tells a write not seen yet from one set back.
    assert marks.entries["results.ns.check"].value == b"2 101"
    async with asyncio.TaskGroup() as tasks:  # the same status from the same CertCheck, once more
        repeat = FakeMsg(SUBJECT, changed.data, 3)
        await recorder._take(repeat, tasks)
        await eventually(lambda: repeat.acked)
    assert writer.statuses == [2]  # not written again, and the mark keeps the version that write made
    assert marks.entries["results.ns.check"].value == b"3 101"


async def test_a_run_that_failed_leaves_its_status_write_to_end_before_the_next_run_writes_anew() -> None:
    """A thread cannot be cancelled: the write a failed run left in the pool lands before the next one's."""
    writer = SlowStatusWriter()
    recorder = Recorder(SimpleNamespace(), writer, Settings(), FakeKeyValue())  # type: ignore[arg-type]
    older = evaluation(1)
    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as tasks:
            await recorder._take(older, tasks)
            await eventually(lambda: recorder._calls)  # its status write is in a pool thread
            raise RuntimeError("the run fails (the bus, say): its tasks are cancelled")
    assert not older.acked and writer.statuses == []
    next_run = asyncio.create_task(recorder._writes_of_the_last_run())
    await asyncio.sleep(0.1)
    assert not next_run.done()  # the older write has not landed yet
    writer.release.set()
    await asyncio.wait_for(next_run, 5)
    assert writer.statuses == [1] and not recorder._calls
