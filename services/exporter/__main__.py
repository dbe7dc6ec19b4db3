"""The exporter service: wiring."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from services.common import bus as bus_mod
from services.common.health import Health
from services.common.runtime import resilient, run_service, supervise
from services.common.settings import Settings
from services.evaluator.follow import ViewFollower
from services.evaluator.view import View
from services.exporter.collector import ViewCollector


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    bus = await bus_mod.open_bus(settings, "exporter")
    try:
        view = View()
        follower = ViewFollower(bus, view)
        following = asyncio.create_task(resilient("follow-objects", follower.run), name="follow-objects")
        await serve(view, follower, health, stop, following)
    finally:
        await bus.close()


async def serve(
    view: View,
    follower: ViewFollower,
    health: Health,
    stop: asyncio.Event,
    *tasks: asyncio.Task[None],
) -> None:
    """Serve the view's certificates as metrics once it has caught up (``follower`` may be someone
    else's: in the all-in-one process the exporter reads the evaluator's view)."""
    await follower.catch_up()
    collector = ViewCollector(view, asyncio.get_running_loop())
    REGISTRY.register(collector)
    health.set_ready(True)
    try:
        await supervise(stop, *tasks)
    finally:
        REGISTRY.unregister(collector)  # a main started again in this process registers its own


def run(argv: list[str] | None = None) -> None:
    run_service("exporter", main, argv)


if __name__ == "__main__":
    run()
