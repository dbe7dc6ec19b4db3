"""The view's follower on a real nats-server: started again after a failure, it goes on from where the
view is, neither from the start nor past anything."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from schemas import subjects
from schemas.messages import ObjectDeleted, encoder
from schemas.streams import OBJECTS
from services.common import bus as bus_mod
from services.domain.follow import PULL_BATCH, ViewFollower
from services.domain.view import View
from tests import subjects as test_subjects


class _RecordingView(View):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[int] = []

    def apply(self, seq: int, event: Any) -> Any:
        self.applied.append(seq)
        return super().apply(seq, event)


async def _publish(bus: bus_mod.Bus, names: list[str]) -> None:
    for name in names:
        deleted = ObjectDeleted(subjects.KIND_SECRET, "follow", name, "uid", "1")
        subject = test_subjects.object_subject(subjects.KIND_SECRET, "follow", name)
        await bus.js.publish(subject, encoder.encode(deleted), stream=OBJECTS.name)


def test_a_follower_started_again_goes_on_from_where_its_view_is(plain_nats_url: str) -> None:
    async def scenario() -> tuple[list[int], int]:
        bus = await bus_mod.connect(plain_nats_url, "follow-test")
        try:
            await bus_mod.ensure_streams(bus)
            first = (await bus.js.stream_info(OBJECTS.name)).state.last_seq + 1
            view = _RecordingView()
            follower = ViewFollower(bus, view)
            await _publish(bus, ["a", "b", "c"])
            running = asyncio.create_task(follower.run())
            await follower.catch_up()
            running.cancel()  # the follower fails (its subscription gone, say)
            await _publish(bus, ["d", "e"])
            running = asyncio.create_task(follower.run())
            async with asyncio.timeout(10):
                while view.seq < first + 4:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # anything read twice would be in by now
            running.cancel()
            return [seq for seq in view.applied if seq >= first], first
        finally:
            await bus.close()

    applied, first = asyncio.run(scenario())
    assert applied == list(range(first, first + 5))  # each message once, in order


class _SlowView(_RecordingView):
    """A view that takes its time over each message, and notes how many its follower held unread then."""

    def __init__(self) -> None:
        super().__init__()
        self.follower: ViewFollower | None = None
        self.most_buffered = 0

    def apply(self, seq: int, event: Any) -> Any:
        assert self.follower is not None
        self.most_buffered = max(self.most_buffered, self.follower.buffered)
        time.sleep(0.0005)  # the event loop is busy: what the server sends meanwhile waits in the process
        return super().apply(seq, event)


def test_a_follower_behind_a_flood_holds_at_most_one_pull_batch_unread(plain_nats_url: str) -> None:
    async def scenario() -> tuple[_SlowView, int]:
        bus = await bus_mod.connect(plain_nats_url, "follow-test")
        try:
            await bus_mod.ensure_streams(bus)
            names = [f"flood-{i}" for i in range(3 * PULL_BATCH)]
            await _publish(bus, names)
            last = (await bus.js.stream_info(OBJECTS.name)).state.last_seq
            view = _SlowView()
            follower = ViewFollower(
                bus, view, test_subjects.object_subject(subjects.KIND_SECRET, "follow", "*")
            )
            view.follower = follower
            running = asyncio.create_task(follower.run())
            async with asyncio.timeout(30):
                await follower.catch_up()
            running.cancel()
            return view, last
        finally:
            await bus.close()

    view, last = asyncio.run(scenario())
    assert view.seq == last
    assert len(view.applied) == len(set(view.applied))
    assert 0 < view.most_buffered <= PULL_BATCH  # a push consumer would have sent the whole flood at once


def test_a_follower_whose_consumer_is_deleted_goes_on_from_where_its_view_is(plain_nats_url: str) -> None:
    async def scenario() -> tuple[list[int], int]:
        bus = await bus_mod.connect(plain_nats_url, "follow-test")
        try:
            await bus_mod.ensure_streams(bus)
            first = (await bus.js.stream_info(OBJECTS.name)).state.last_seq + 1
            view = _RecordingView()
            follower = ViewFollower(
                bus, view, test_subjects.object_subject(subjects.KIND_SECRET, "follow", "*")
            )
            running = asyncio.create_task(follower.run())
            await _publish(bus, ["g", "h"])
            async with asyncio.timeout(10):
                while view.seq < first + 1:
                    await asyncio.sleep(0.05)
            gone = follower.consumer
            assert gone is not None
            await bus.js.delete_consumer(OBJECTS.name, gone)
            await _publish(bus, ["i", "j"])
            async with asyncio.timeout(20):
                while view.seq < first + 3:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            running.cancel()
            assert follower.consumer != gone
            return [seq for seq in view.applied if seq >= first], first
        finally:
            await bus.close()

    applied, first = asyncio.run(scenario())
    assert applied == list(range(first, first + 4))
