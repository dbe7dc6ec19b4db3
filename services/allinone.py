"""``certcheck all``: the watcher, evaluator, recorder, notifier and exporter in one process.

One event loop, one NATS connection (as the ``all`` user, whose permissions are the union of the
services'), one Kubernetes client, one HTTP port for /metrics, /healthz and /readyz. Every service
runs its own code paths over the same streams and consumers as in the split deployment, so a small
cluster runs one Deployment and can grow into the split one without migrating anything. The
exporter serves the views of the partitions the evaluator holds instead of following the stream a
second time (so several all-in-one replicas each export the series of the partitions they evaluate).

Like ``services/cli.py``, this module is wiring that sits beside the services, not one of them: the
only place that puts several together (no service imports another).
"""

from __future__ import annotations

import asyncio

from schemas.permissions import ALL_IN_ONE_USER
from services.common import bus as bus_mod
from services.common.health import Health
from services.common.kube import api_client
from services.common.kube_writer import KubeWriter
from services.common.runtime import run_service, supervise
from services.common.settings import Settings
from services.evaluator import __main__ as evaluator
from services.evaluator.replica import EvaluatorReplica
from services.exporter import __main__ as exporter
from services.notifier import __main__ as notifier
from services.recorder import __main__ as recorder
from services.watcher import __main__ as watcher

# The watcher's watches hold a connection each, besides the recorder's writers.
WATCH_CONNECTIONS = 8


async def main(settings: Settings, health: Health, stop: asyncio.Event) -> None:
    async with bus_mod.service_bus(settings, ALL_IN_ONE_USER) as bus:
        api = api_client(settings.kubeconfig, pool_size=settings.write_concurrency + WATCH_CONNECTIONS)
        evaluating = EvaluatorReplica(bus, settings)
        parts = {
            "watcher": watcher.serve(bus, api, settings, health.part("watcher"), stop),
            "evaluator": evaluator.serve(evaluating, health.part("evaluator"), stop),
            "recorder": recorder.serve(
                bus, KubeWriter(api, "recorder"), settings, health.part("recorder"), stop
            ),
            "notifier": notifier.serve(bus, api, settings, health.part("notifier"), stop),
            "exporter": exporter.serve(
                evaluating.views, lambda: evaluating.ready, health.part("exporter"), stop
            ),
        }
        await supervise(stop, *(asyncio.create_task(part, name=name) for name, part in parts.items()))


def run(argv: list[str] | None = None) -> None:
    run_service("all", main, argv)


if __name__ == "__main__":
    run()
