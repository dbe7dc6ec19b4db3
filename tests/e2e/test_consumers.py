"""Durable consumers: a short ack wait that long work does not trip, and limits that follow releases."""

from __future__ import annotations

import asyncio
import uuid

from nats.js.api import ConsumerConfig, StreamConfig

from services.common import bus as bus_mod
from services.common import consume


async def _bus_with_stream(url: str) -> tuple[bus_mod.Bus, str]:
    bus = await bus_mod.connect(url, "consumer-test")
    stream = f"T{uuid.uuid4().hex[:8]}"
    await bus.js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    return bus, stream


def test_an_existing_consumer_takes_the_ack_wait_of_this_release(plain_nats_url: str) -> None:
    async def scenario() -> tuple[float | None, float | None, int | None]:
        bus, stream = await _bus_with_stream(plain_nats_url)
        try:
            await bus.js.add_consumer(
                stream, ConsumerConfig(durable_name="old", ack_wait=120, max_ack_pending=100)
            )
            before = (await bus.js.consumer_info(stream, "old")).config.ack_wait
            await consume.durable_consumer(bus, stream, "old")
            after = (await bus.js.consumer_info(stream, "old")).config
            return before, after.ack_wait, after.max_ack_pending
        finally:
            await bus.close()

    before, after, max_ack_pending = asyncio.run(scenario())
    assert before == 120
    assert after == consume.ACK_WAIT_SECONDS
    assert max_ack_pending == 5_000


def test_held_messages_are_not_redelivered_past_the_ack_wait_and_are_once_let_go(
    plain_nats_url: str,
) -> None:
    async def scenario() -> tuple[int, int, int]:
        bus, stream = await _bus_with_stream(plain_nats_url)
        try:
            sub = await consume.durable_consumer(bus, stream, "work", ack_wait=1.0)
            await bus.js.publish(f"{stream}.a", b"x")
            [msg] = await consume.fetch_batch(sub, 10, wait=2)
            async with consume.held([msg], every=0.25):
                await asyncio.sleep(2.5)  # the work: 2.5 ack waits long
                while_held = len(await consume.fetch_batch(sub, 10, wait=0.5))
            # Let go unacknowledged (the process died, say): delivered again after one ack wait.
            again = await consume.fetch_batch(sub, 10, wait=3)
            return while_held, len(again), int(again[0].metadata.num_delivered or 0) if again else 0
        finally:
            await bus.close()

    while_held, redelivered, num_delivered = asyncio.run(scenario())
    assert while_held == 0
    assert redelivered == 1
    assert num_delivered == 2
