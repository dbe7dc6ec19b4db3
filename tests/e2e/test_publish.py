"""Publishing without waiting for the acknowledgement (``publish_pipelined``) on a real nats-server: a free
slot is taken at once, a full pipeline waits a bounded time, and a send that fails leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats
import pytest
from nats.js.errors import TooManyStalledMsgsError

from services.common import bus as bus_mod


async def _bus_with_slots(url: str, slots: int) -> bus_mod.Bus:
    nc = await nats.connect(url)
    return bus_mod.Bus(nc, nc.jetstream(publish_async_max_pending=slots))


async def test_a_full_pipeline_waits_at_most_the_stall_timeout_and_a_freed_slot_is_taken_at_once(
    plain_nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float | None] = []
    wait_for = asyncio.wait_for

    async def recorded(awaitable: Any, timeout: float | None) -> Any:
        waits.append(timeout)
        return await wait_for(awaitable, timeout)

    bus = await _bus_with_slots(plain_nats_url, 2)
    subject = f"T{uuid.uuid4().hex[:8]}.silent"
    silent = await bus.nc.subscribe(subject)  # it never answers: the acknowledgements never come
    monkeypatch.setattr(asyncio, "wait_for", recorded)
    try:
        first = await bus_mod.publish_pipelined(bus, subject, b"1", {}, stall_timeout=0.3)
        await bus_mod.publish_pipelined(bus, subject, b"2", {}, stall_timeout=0.3)
        assert waits == [None, None]  # free slots: taken with no timer

        started = time.monotonic()
        with pytest.raises(TooManyStalledMsgsError):
            await bus_mod.publish_pipelined(bus, subject, b"3", {}, stall_timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 2
        assert waits[2] == 0.3 and len(bus.js._publish_async_futures) == 2  # the refused one left none

        first.cancel()  # frees its slot
        await asyncio.sleep(0)
        await bus_mod.publish_pipelined(bus, subject, b"4", {}, stall_timeout=0.3)
        assert waits[3] is None
        assert [m.data for m in await _received(silent, 3)] == [b"1", b"2", b"4"]
    finally:
        monkeypatch.undo()
        for future in list(bus.js._publish_async_futures.values()):
            future.cancel()
        await bus.close()


async def _received(sub: Any, count: int) -> list[Any]:
    return [await sub.next_msg(timeout=2) for _ in range(count)]
