"""The one consume policy every consumer uses: decode or dead-letter, work while held, ack; nak with
backoff on failure and dead-letter after the policy's attempts; a delay the work asks for is no failure."""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.msg import Msg

from services.common.consume import Later, Outcome, Policy, consume, handle_one, settle
from tests.fakes import FakeBus, FakeMsg, FakeSubscription

POLICY = Policy("thing", max_deliveries=3, retry_cap=10.0)


def decode(data: bytes) -> str:
    text = data.decode()
    if not text.startswith("ok"):
        raise ValueError(f"not a thing: {text!r}")
    return text


async def done(item: str, msg: Msg) -> Later:
    return None


async def fails(item: str, msg: Msg) -> Later:
    raise RuntimeError("the API server is away")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_message_whose_work_is_done_is_acked() -> None:
    bus, msg = FakeBus(), FakeMsg("s.a", b"ok")
    assert run(handle_one(bus, msg, decode, done, POLICY)) == "ok"  # type: ignore[arg-type]
    assert msg.acked and not msg.naked and not bus.js.published


def test_an_undecodable_message_is_dead_lettered_with_why_and_never_redelivered() -> None:
    bus, msg = FakeBus(), FakeMsg("s.a", b"garbage")
    assert run(handle_one(bus, msg, decode, done, POLICY)) == "undecodable"  # type: ignore[arg-type]
    assert msg.termed and not msg.acked
    [(subject, reason)] = bus.dead_letters()
    assert subject.endswith("s.a") and reason.startswith("undecodable thing: not a thing")


def test_a_message_its_admission_refuses_is_dead_lettered_unhandled_and_never_retried() -> None:
    handled: list[str] = []

    async def work(item: str, msg: Msg) -> Later:
        handled.append(item)
        return None

    def admit(subject: str, item: str) -> str | None:
        return None if subject.endswith(item.removeprefix("ok-")) else f"{item} is not {subject}"

    bus, forged, genuine = FakeBus(), FakeMsg("s.a", b"ok-b"), FakeMsg("s.a", b"ok-a")
    assert run(handle_one(bus, forged, decode, work, POLICY, admit)) == "refused"  # type: ignore[arg-type]
    assert run(handle_one(bus, genuine, decode, work, POLICY, admit)) == "ok"  # type: ignore[arg-type]
    assert handled == ["ok-a"]
    assert forged.termed and not forged.naked and genuine.acked
    [(subject, reason)] = bus.dead_letters()
    assert subject.endswith("s.a") and reason == "refused thing: ok-b is not s.a"


def test_failing_work_is_naked_with_growing_backoff_up_to_the_cap() -> None:
    delays = []
    for delivered in (1, 2):
        msg = FakeMsg("s.a", b"ok", delivered=delivered)
        policy = Policy("thing", max_deliveries=10, retry_cap=1.5)
        assert run(handle_one(FakeBus(), msg, decode, fails, policy)) == "retry"  # type: ignore[arg-type]
        assert msg.naked and not msg.acked
        delays.append(msg.nak_delay)
    assert delays == [0.5, 1.0]
    capped = FakeMsg("s.a", b"ok", delivered=9)
    run(handle_one(FakeBus(), capped, decode, fails, Policy("thing", 10, retry_cap=1.5)))  # type: ignore[arg-type]
    assert capped.nak_delay == 1.5


def test_work_still_failing_after_the_policys_attempts_goes_to_the_dead_letters() -> None:
    bus, msg = FakeBus(), FakeMsg("s.a", b"ok", delivered=3)
    assert run(handle_one(bus, msg, decode, fails, POLICY)) == "failing"  # type: ignore[arg-type]
    assert msg.termed and not msg.naked
    [(_, reason)] = bus.dead_letters()
    assert reason == "thing still failing after 3 attempts: the API server is away"


def test_work_whose_failure_is_never_the_messages_is_retried_for_ever() -> None:
    bus, msg = FakeBus(), FakeMsg("s.a", b"ok", delivered=1000)
    outcome = run(handle_one(bus, msg, decode, fails, Policy("batch", max_deliveries=None)))  # type: ignore[arg-type]
    assert outcome == "retry" and msg.naked and not bus.dead_letters()


def test_work_that_asks_to_be_looked_at_later_is_naked_with_its_delay_and_no_failure() -> None:
    async def retry_after(item: str, msg: Msg) -> Later:
        return 42.0

    bus, msg = FakeBus(), FakeMsg("s.a", b"ok", delivered=3)  # the last attempt a failure would have
    assert run(handle_one(bus, msg, decode, retry_after, POLICY)) == "later"  # type: ignore[arg-type]
    assert msg.naked and msg.nak_delay == 42.0 and not bus.dead_letters()


def test_a_batch_is_settled_together_once_its_work_is_done() -> None:
    msgs = [FakeMsg("s.a", b"ok"), FakeMsg("s.b", b"ok")]
    assert run(settle(FakeBus(), msgs, asyncio.sleep(0), POLICY)) == "ok"  # type: ignore[arg-type]
    assert all(m.acked for m in msgs)


def test_work_done_before_the_first_beat_starts_no_task_to_beat() -> None:
    msg = FakeMsg("s.a", b"ok")
    tasks_during_work: list[int] = []

    async def quick() -> None:
        tasks_during_work.append(len(asyncio.all_tasks()))

    async def scenario() -> Outcome:
        return await settle(FakeBus(), [msg], quick(), Policy("thing"))  # type: ignore[list-item]

    assert run(scenario()) == "ok"
    assert tasks_during_work == [1]  # the scenario's own task only
    assert msg.acked and msg.progress == 0


def test_slow_work_keeps_telling_jetstream_its_messages_are_in_progress() -> None:
    msg = FakeMsg("s.a", b"ok")
    policy = Policy("thing")

    async def slow() -> None:
        await asyncio.sleep(3.0)  # held() beats every ACK_WAIT_SECONDS / 4 = 2.5 s

    assert run(settle(FakeBus(), [msg], slow(), policy)) == "ok"  # type: ignore[list-item]
    assert msg.progress >= 1 and msg.acked


def test_the_loop_handles_each_message_alone_so_one_failure_holds_up_no_other() -> None:
    handled: list[str] = []

    async def handle(item: str, msg: Msg) -> Later:
        if item == "ok-bad":
            raise RuntimeError("boom")
        handled.append(item)
        return None

    batch = [
        FakeMsg("s.a", b"ok-1"),
        FakeMsg("s.b", b"ok-bad"),
        FakeMsg("s.c", b"junk"),
        FakeMsg("s.d", b"ok-2"),
    ]
    outcomes: list[Outcome] = []
    bus = FakeBus()

    async def scenario() -> None:
        loop = asyncio.create_task(
            consume(bus, FakeSubscription(batch), decode, handle, POLICY, batch=10, counted=outcomes.append)  # type: ignore[arg-type]
        )
        while len(outcomes) < 4:
            await asyncio.sleep(0.01)
        loop.cancel()

    run(scenario())
    assert sorted(handled) == ["ok-1", "ok-2"]
    assert sorted(outcomes) == ["ok", "ok", "retry", "undecodable"]
    assert batch[0].acked and batch[1].naked and batch[2].termed and batch[3].acked


def test_of_several_messages_of_one_subject_in_a_batch_only_the_newest_is_handled() -> None:
    handled: list[str] = []

    async def handle(item: str, msg: Msg) -> Later:
        handled.append(item)
        return None

    batch = [
        FakeMsg("s.a", b"ok-old", seq=1),
        FakeMsg("s.b", b"ok-b", seq=2),
        FakeMsg("s.a", b"ok-new", seq=3),
    ]
    outcomes: list[Outcome] = []

    async def scenario() -> None:
        loop = asyncio.create_task(
            consume(
                FakeBus(),  # type: ignore[arg-type]
                FakeSubscription(batch),  # type: ignore[arg-type]
                decode,
                handle,
                POLICY,
                batch=10,
                latest_only=True,
                counted=outcomes.append,
            )
        )
        while len(outcomes) < 2:
            await asyncio.sleep(0.01)
        loop.cancel()

    run(scenario())
    assert sorted(handled) == ["ok-b", "ok-new"]
    assert all(m.acked for m in batch)  # the superseded one too: it needs no work
