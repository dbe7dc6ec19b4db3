"""The evaluator service: wiring."""

from __future__ import annotations

import asyncio
import logging

from schemas.streams import PARTITIONS_BUCKET
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.partitions import PartitionOwner
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.domain.follow import report_view_sizes
from services.evaluator.replica import EvaluatorReplica

log = logging.getLogger("certcheck.evaluator")

READINESS_POLL_SECONDS = 0.5
GROUP = "evaluator"


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    async with bus_mod.service_bus(settings, "evaluator") as bus:
        await serve(EvaluatorReplica(bus, settings), health, stop)


async def serve(replica: EvaluatorReplica, health: Health, stop: asyncio.Event) -> None:
    """Hold this replica's share of the partitions (each followed, evaluated once whole, then worked
    on change by change) until asked to stop; then hand them over."""
    kv = await bus_mod.key_value(replica.bus, PARTITIONS_BUCKET, "which replica holds which partition")
    owner = PartitionOwner(
        replica.bus.js,
        kv,
        PARTITIONS_BUCKET,
        GROUP,
        replica.settings.instance_id,
        replica.bus.partitions,
        replica.settings.lease_seconds,
        replica.claim,
        replica.release,
    )
    log.info("%d partitions, holding a share as %s", replica.bus.partitions, replica.settings.instance_id)
    owning = asyncio.create_task(owner.run(stop), name="partitions")
    readiness = asyncio.create_task(report_readiness(health, owner, replica), name="readiness")
    sizes = asyncio.create_task(report_view_sizes(replica.views), name="view-sizes")
    await supervise(stop, owning, readiness, sizes)


async def report_readiness(health: Health, owner: PartitionOwner, replica: EvaluatorReplica) -> None:
    """Ready once the replica holds its share and has evaluated every partition it holds."""
    while True:
        settled = owner.settled.is_set()
        waiting = sorted(set(replica.evaluators) - replica.started)
        if settled and not waiting:
            health.set_ready(True)
        else:
            health.set_ready(False, f"partitions starting: {waiting}" if settled else "claiming partitions")
        await asyncio.sleep(READINESS_POLL_SECONDS)


def run(argv: list[str] | None = None) -> None:
    run_service("evaluator", main, argv)


if __name__ == "__main__":
    run()
