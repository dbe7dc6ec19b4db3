"""The evaluator service: wiring."""

from __future__ import annotations

import asyncio
import logging

from services.common import bus as bus_mod
from services.common.health import Health
from services.common.runtime import run_service
from services.common.settings import Settings
from services.evaluator.service import Evaluator

log = logging.getLogger("certcheck.evaluator")


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    bus = await bus_mod.connect(settings.nats_url, "certcheck-evaluator")
    await bus_mod.ensure_streams(bus)
    evaluator = Evaluator(bus, settings)
    await evaluator.consumers()
    tasks = [asyncio.create_task(evaluator.follow_objects(), name="follow-objects")]
    await evaluator.catch_up()
    await evaluator.sweep("start")
    tasks += [
        asyncio.create_task(evaluator.work_objects(), name="work-objects"),
        asyncio.create_task(evaluator.work_due(), name="work-due"),
        asyncio.create_task(evaluator.resync(), name="resync"),
    ]
    health.set_ready(True)
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await bus.close()
    for task in done:
        if task is not stopping and task.exception():
            raise task.exception()  # type: ignore[misc]


def run(argv: list[str] | None = None) -> None:
    run_service("evaluator", main, argv)


if __name__ == "__main__":
    run()
