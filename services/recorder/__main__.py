"""The recorder service: wiring."""

from __future__ import annotations

import asyncio

from schemas.streams import CLUSTER_SHARES_BUCKET, RECORDER_APPLIED_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import api_client
from services.common.kube_writer import KubeWriter
from services.common.runtime import resilient, run_service, supervise
from services.common.settings import Settings
from services.recorder.service import Recorder


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    async with bus_mod.service_bus(settings, "recorder") as bus:
        writer = KubeWriter(api_client(settings.kubeconfig, pool_size=settings.write_concurrency), "recorder")
        await serve(bus, writer, settings, health, stop)


async def serve(
    bus: bus_mod.Bus, writer: KubeWriter, settings: Settings, health: Health, stop: asyncio.Event
) -> None:
    applied = await bus_mod.key_value(bus, RECORDER_APPLIED_BUCKET, "results applied by the recorder")
    shares = await bus_mod.key_value(bus, CLUSTER_SHARES_BUCKET, "ClusterCertChecks' shares' last results")
    recorder = Recorder(bus, writer, settings, applied, shares)
    health.set_ready(True)
    await supervise(
        stop,
        asyncio.create_task(resilient("record", recorder.run), name="record"),
        asyncio.create_task(resilient("record-events", recorder.run_events), name="record-events"),
    )


def run(argv: list[str] | None = None) -> None:
    run_service("recorder", main, argv)


if __name__ == "__main__":
    run()
