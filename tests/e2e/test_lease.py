"""The leader lease on a real nats-server: one holder, takeover on expiry or release, self-fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.js.kv import KeyValue

from services.common import bus as bus_mod
from services.common.lease import Lease, LeaseLostError


def run(url: str, scenario: Callable[[KeyValue], Awaitable[None]]) -> None:
    async def main() -> None:
        bus = await bus_mod.connect(url, "lease-test")
        try:
            kv = await bus_mod.key_value(bus, f"leases_{time.monotonic_ns()}")
            await scenario(kv)
        finally:
            await bus.close()

    asyncio.run(main())


def test_one_holder_at_a_time_and_a_release_hands_over_at_once(plain_nats_url: str) -> None:
    async def scenario(kv: KeyValue) -> None:
        first, second = Lease(kv, "w", "a", 15), Lease(kv, "w", "b", 15)
        assert await first.try_acquire()
        assert not await second.try_acquire()
        assert await first.renew()
        await first.release()
        assert await second.try_acquire()
        assert not await first.try_acquire()

    run(plain_nats_url, scenario)


def test_a_restarted_holder_takes_its_own_lease_back_at_once(plain_nats_url: str) -> None:
    async def scenario(kv: KeyValue) -> None:
        assert await Lease(kv, "w", "pod-1", 15).try_acquire()
        assert await Lease(kv, "w", "pod-1", 15).try_acquire()

    run(plain_nats_url, scenario)


def test_a_standby_takes_over_an_expired_lease_and_the_old_holder_learns_it_lost(plain_nats_url: str) -> None:
    async def scenario(kv: KeyValue) -> None:
        holder = Lease(kv, "w", "a", 0.6)
        standby = Lease(kv, "w", "b", 0.6, clock=lambda: time.time() + 10)
        assert await holder.try_acquire()
        assert await standby.try_acquire()  # by its clock, the holder's renewal is 10 s old
        with pytest.raises(LeaseLostError, match="another replica"):
            await asyncio.wait_for(holder.hold(), timeout=5)

    run(plain_nats_url, scenario)


def test_a_holder_whose_renewals_fail_fences_itself_and_stops_holding(plain_nats_url: str) -> None:
    async def scenario(kv: KeyValue) -> None:
        holder = Lease(kv, "w", "a", 0.6)
        assert await holder.try_acquire() and not holder.fenced()
        holding = asyncio.create_task(holder.hold())
        await asyncio.sleep(0.3)
        assert not holding.done() and not holder.fenced()  # renewing fine so far

        async def refused(*_: object, **__: object) -> int:
            raise TimeoutError("the bus does not answer")

        kv.update = refused  # type: ignore[method-assign]  # every renewal from now on fails
        with pytest.raises(LeaseLostError, match="in time"):
            await asyncio.wait_for(holding, timeout=3)
        assert holder.fenced()

    run(plain_nats_url, scenario)
