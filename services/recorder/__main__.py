"""The recorder service: wiring."""

from __future__ import annotations

import asyncio

from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import api_client
from services.common.runtime import run_service
from services.common.settings import Settings
from services.recorder.kube import KubeWriter
from services.recorder.service import Recorder


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    bus = await bus_mod.connect(settings.nats_url, "certcheck-recorder")
    await bus_mod.ensure_streams(bus)
    writer = KubeWriter(api_client(settings.kubeconfig, pool_size=settings.write_concurrency))
    recorder = Recorder(bus, writer, settings)
    task = asyncio.create_task(recorder.run(), name="record")
    health.set_ready(True)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, task], return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await bus.close()
    if task.done() and not task.cancelled() and task.exception():
        raise task.exception()  # type: ignore[misc]


def run(argv: list[str] | None = None) -> None:
    run_service("recorder", main, argv)


if __name__ == "__main__":
    run()
