"""The notifier service: wiring."""

from __future__ import annotations

import asyncio

from kubernetes import client

from schemas.streams import NOTIFIER_STATE_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import api_client
from services.common.kube_writer import KubeWriter
from services.common.runtime import resilient, run_service, supervise
from services.common.settings import Settings
from services.notifier.secrets import SecretReader
from services.notifier.service import Notifier


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    async with bus_mod.service_bus(settings, "notifier") as bus:
        await serve(bus, api_client(settings.kubeconfig), settings, health, stop)


async def serve(
    bus: bus_mod.Bus, api: client.ApiClient, settings: Settings, health: Health, stop: asyncio.Event
) -> None:
    kv = await bus_mod.key_value(bus, NOTIFIER_STATE_BUCKET, "what each notification target was told")
    notifier = Notifier(bus, kv, SecretReader(api), KubeWriter(api, "notifier"), settings)
    health.set_ready(True)
    await supervise(stop, asyncio.create_task(resilient("notify", notifier.run), name="notify"))


def run(argv: list[str] | None = None) -> None:
    run_service("notifier", main, argv)


if __name__ == "__main__":
    run()
