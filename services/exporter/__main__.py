"""The exporter service: wiring."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from urllib.parse import unquote

from prometheus_client import REGISTRY

from schemas import subjects
from schemas.streams import PARTITIONS_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.partitions import PartitionOwner
from services.common.runtime import cancel_and_wait, resilient, run_service, spawn, supervise
from services.common.settings import Settings
from services.domain.follow import ViewFollower
from services.domain.view import View
from services.exporter.collector import ViewCollector
from services.exporter.page import entries, inventory, object_page

GROUP = "exporter"


class ExporterReplica:
    """The views of the partitions this exporter replica holds: each series is served by exactly the
    replica holding its partition, and Prometheus scrapes every replica."""

    def __init__(self, bus: bus_mod.Bus) -> None:
        self.bus = bus
        self.followers: dict[int, ViewFollower] = {}
        self.caught_up: set[int] = set()
        self._tasks: dict[int, asyncio.Task[None]] = {}

    def views(self) -> list[View]:
        return [f.view for p, f in sorted(self.followers.items()) if p in self.caught_up]

    async def claim(self, partition: int) -> None:
        follower = ViewFollower(self.bus, View(), subjects.objects_of(partition))
        self.followers[partition] = follower
        self._tasks[partition] = spawn(self._follow(partition, follower), f"partition-{partition}")

    async def _follow(self, partition: int, follower: ViewFollower) -> None:
        following = asyncio.create_task(resilient(f"partition {partition} follow", follower.run))
        try:
            await follower.catch_up()
            self.caught_up.add(partition)
            await following
        finally:
            await cancel_and_wait(following)

    async def release(self, partition: int) -> None:
        self.followers.pop(partition, None)
        self.caught_up.discard(partition)
        await cancel_and_wait(self._tasks.pop(partition, None))

    @property
    def ready(self) -> bool:
        return set(self.followers) <= self.caught_up


class Inventory:
    """The inventory pages, built on the event loop that owns the views (never half-updated)."""

    def __init__(self, views: Callable[[], Iterable[View]], loop: asyncio.AbstractEventLoop) -> None:
        self.views = views
        self.loop = loop

    def page(self, path: str, query: dict[str, list[str]]) -> bytes | None:
        if path != "/" and not path.startswith("/object/"):
            return None

        async def build() -> bytes | None:
            now = datetime.now(UTC)
            found = entries(self.views(), now)
            if path == "/":
                return inventory(found, {k: v[0] for k, v in query.items() if v}, now)
            parts = [unquote(p) for p in path.removeprefix("/object/").split("/")]
            if len(parts) != 3:
                return None
            namespace, kind, name = parts
            return object_page(found, namespace, kind, name, now)

        return asyncio.run_coroutine_threadsafe(build(), self.loop).result(timeout=30)


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    async with bus_mod.service_bus(settings, "exporter") as bus:
        replica = ExporterReplica(bus)
        kv = await bus_mod.key_value(bus, PARTITIONS_BUCKET, "which replica holds which partition")
        owner = PartitionOwner(
            bus.js,
            kv,
            PARTITIONS_BUCKET,
            GROUP,
            settings.instance_id,
            bus.partitions,
            settings.lease_seconds,
            replica.claim,
            replica.release,
        )
        owning = asyncio.create_task(owner.run(stop), name="partitions")
        await serve(replica.views, lambda: owner.settled.is_set() and replica.ready, health, stop, owning)


async def serve(
    views: Callable[[], Iterable[View]],
    ready: Callable[[], bool],
    health: Health,
    stop: asyncio.Event,
    *tasks: asyncio.Task[None],
) -> None:
    """Serve the certificates of ``views`` (the partitions held, caught up) as metrics; ready once
    ``ready`` says so. In the all-in-one process the views are the evaluator's."""
    loop = asyncio.get_running_loop()
    collector = ViewCollector(views, loop)
    REGISTRY.register(collector)
    health.serve_pages(Inventory(views, loop).page)

    async def report_readiness() -> None:
        while True:
            is_ready = ready()
            health.set_ready(is_ready, "" if is_ready else "partitions catching up")
            await asyncio.sleep(0.5)

    try:
        await supervise(stop, *tasks, asyncio.create_task(report_readiness(), name="readiness"))
    finally:
        REGISTRY.unregister(collector)  # a main started again in this process registers its own


def run(argv: list[str] | None = None) -> None:
    run_service("exporter", main, argv)


if __name__ == "__main__":
    run()
