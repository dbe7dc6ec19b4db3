"""One evaluator replica: the partitions it holds, each evaluated by an Evaluator of its own (its view,
its work consumers, its schedules), started when the partition's lease is claimed and stopped when the
partition is handed over (services/common/partitions.py decides which)."""

from __future__ import annotations

import asyncio
import logging

from services.common.bus import Bus
from services.common.runtime import cancel_and_wait, resilient, spawn
from services.common.settings import Settings
from services.domain.view import View
from services.evaluator.service import Evaluator, changes_waiting

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_SECONDS = 2.0  # within the 5 s a stopping service has


class EvaluatorReplica:
    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        self.evaluators: dict[int, Evaluator] = {}
        self.started: set[int] = set()  # partitions whose start-up evaluation went through
        self._tasks: dict[int, asyncio.Task[None]] = {}
        changes_waiting.set_function(lambda: sum(e.changes_waiting for e in self.evaluators.values()))

    def views(self) -> list[View]:
        """The views of the partitions held and caught up (what the all-in-one exporter serves)."""
        return [e.view for p, e in sorted(self.evaluators.items()) if p in self.started]

    @property
    def ready(self) -> bool:
        return all(p in self.started for p in self.evaluators)

    async def claim(self, partition: int) -> None:
        evaluator = Evaluator(self.bus, self.settings, partition)
        self.evaluators[partition] = evaluator
        self._tasks[partition] = spawn(self._serve(evaluator), f"partition-{partition}")

    async def release(self, partition: int) -> None:
        """Stop evaluating the partition. What its consumers delivered and it did not acknowledge is
        delivered again to the partition's next holder, which evaluates every CertCheck of it anyway."""
        task = self._tasks.pop(partition, None)
        evaluator = self.evaluators.pop(partition, None)
        self.started.discard(partition)
        await cancel_and_wait(task)
        if evaluator is not None:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_SECONDS):
                    await evaluator.flush()
            except Exception as exc:  # its next holder derives those facts again, under the same ids
                log.warning("partition %d: what its CertChecks told is not all written: %r", partition, exc)

    async def _serve(self, evaluator: Evaluator) -> None:
        """Consumers first (nothing falls between them and the view), then the view, one evaluation of
        everything in it, then every change and due time, and the periodic resync."""
        partition = evaluator.partition
        await resilient(f"partition {partition} consumers", evaluator.consumers)
        following = asyncio.create_task(
            resilient(f"partition {partition} follow", evaluator.follow_objects), name=f"follow-{partition}"
        )
        try:
            await evaluator.catch_up()
            await evaluator.start()
            self.started.add(partition)
            certchecks = sum(1 for _ in evaluator.view.all_certchecks())
            log.info("partition %d: caught up and evaluated (%d CertChecks)", partition, certchecks)
            await asyncio.gather(
                resilient(f"partition {partition} work-objects", evaluator.work_objects),
                resilient(f"partition {partition} work-due", evaluator.work_due),
                evaluator.resync(),
            )
        finally:
            await cancel_and_wait(following)
