"""The evaluator service: wiring."""

from __future__ import annotations

import asyncio
import logging

from services.common import bus as bus_mod
from services.common.health import Health
from services.common.runtime import resilient, run_service, supervise
from services.common.settings import Settings
from services.evaluator.service import Evaluator

log = logging.getLogger("certcheck.evaluator")


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    bus = await bus_mod.open_bus(settings, "evaluator")
    try:
        await serve(Evaluator(bus, settings), health, stop)
    finally:
        await bus.close()


async def serve(evaluator: Evaluator, health: Health, stop: asyncio.Event) -> None:
    """Follow the objects stream, evaluate once from the whole view, then work on every change."""
    await evaluator.consumers()
    tasks = [
        asyncio.create_task(resilient("follow-objects", evaluator.follow_objects), name="follow-objects")
    ]
    await evaluator.catch_up()
    await evaluator.start()
    tasks += [
        asyncio.create_task(resilient("work-objects", evaluator.work_objects), name="work-objects"),
        asyncio.create_task(resilient("work-due", evaluator.work_due), name="work-due"),
        asyncio.create_task(evaluator.resync(), name="resync"),
    ]
    health.set_ready(True)
    await supervise(stop, *tasks)


def run(argv: list[str] | None = None) -> None:
    run_service("evaluator", main, argv)


if __name__ == "__main__":
    run()
