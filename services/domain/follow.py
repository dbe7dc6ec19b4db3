"""Following the objects stream into a View (the evaluator's, and the exporter's)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from schemas import subjects
from schemas.messages import object_decoder
from schemas.streams import OBJECTS
from services.common.bus import Bus
from services.common.logs import object_ref, trace
from services.common.runtime import backoff
from services.domain.provenance import object_refusal
from services.domain.view import View

log = logging.getLogger(__name__)

GONE_CHECK_SECONDS = 2.0
bad_objects = Counter("certcheck_undecodable_objects_total", "Object messages that could not be decoded")
view_objects = Gauge("certcheck_view_objects", "Objects in the views of the partitions held", ["kind"])
VIEW_SIZE_SECONDS = 5.0


async def report_view_sizes(views: Callable[[], Iterable[View]]) -> None:
    """Keep certcheck_view_objects up to date (on the loop that owns the views: never half-updated)."""
    while True:
        totals: dict[str, int] = {}
        for view in views():
            for kind, count in view.size().items():
                totals[kind] = totals.get(kind, 0) + count
        for kind in subjects.OBJECT_KINDS:
            view_objects.labels(kind).set(totals.get(kind, 0))
        await asyncio.sleep(VIEW_SIZE_SECONDS)


class ViewFollower:
    """Reads the objects stream (the subjects of ``subject``, say one partition's) with an ordered
    consumer and folds every message into ``view``."""

    def __init__(self, bus: Bus, view: View, subject: str = subjects.OBJECTS_ALL) -> None:
        self.bus = bus
        self.view = view
        self.subject = subject
        self._advanced = asyncio.Condition()
        # Sequences of messages that could not be decoded, and why: the work consumer dead-letters them.
        self.undecodable: dict[int, str] = {}
        # How many messages the stream held beyond the last one read (0: everything it holds was read).
        self.behind: int | None = None

    async def run(self) -> None:
        """Follow the stream (from where the view is, when this starts again after a failure)."""
        resume = self.view.seq + 1 if self.view.seq else None
        sub = await self.bus.js.subscribe(
            self.subject,
            stream=OBJECTS.name,
            ordered_consumer=True,
            config=ConsumerConfig(opt_start_seq=resume),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if resume else DeliverPolicy.ALL,
            pending_msgs_limit=1_000_000,
        )
        async for msg in sub.messages:
            seq = msg.metadata.sequence.stream
            self.behind = msg.metadata.num_pending
            problem = "undecodable"
            try:
                event = object_decoder.decode(msg.data)
                refusal = object_refusal(msg.subject, event)
                if refusal is not None:
                    problem = "refused"
                    raise ValueError(refusal)
                problem = "unusable"
                effects = self.view.apply(seq, event)
                if log.isEnabledFor(logging.DEBUG):
                    ref = object_ref(event.namespace, event.name, event.resource_version)
                    kind = msg.subject.split(".")[4] if msg.subject.count(".") >= 6 else "object"
                    trace(log, "view", ref, "%s message %d applied: %s", kind, seq, effects.describe())
            except Exception as exc:  # whatever a message holds, the view moves on past it
                log.error("%s object message %s at seq %d: %r", problem, msg.subject, seq, exc)
                bad_objects.inc()
                if len(self.undecodable) < 10_000:
                    self.undecodable[seq] = f"{problem} object message: {exc}"[:500]
                self.view.seq = max(self.view.seq, seq)
            async with self._advanced:
                self._advanced.notify_all()

    async def _applied(self, seq: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.view.seq >= seq)
        except TimeoutError:
            return False
        return True

    async def wait_for(self, seq: int) -> None:
        """Until the view has applied stream sequence ``seq``, or that message is gone from the stream
        (a tombstone expired, a purge) before it was read."""
        while not await self._applied(seq, GONE_CHECK_SECONDS):
            try:
                await self.bus.js.get_msg(OBJECTS.name, seq)
            except NotFoundError:
                return
            except Exception as exc:  # the bus unreachable: keep waiting
                log.debug("checking for message %d: %s", seq, exc)

    async def catch_up(self) -> None:
        """Until the view holds everything the stream holds: it read a message with nothing after it,
        or the last the stream has. Reading up to the last sequence the stream had when this was called
        is not enough: the stream keeps one message per object, so an object changed meanwhile loses
        its older message before the view gets to it and is missing until the view reaches the newer
        one; a sweep from that view would publish results without it."""
        failures = 0
        while self.behind != 0:
            try:
                last = await self._last_seq()
            except Exception as exc:  # the stream without a leader for now (a node lost): ask again
                failures += 1
                log.warning("cannot tell how far %s goes (%r): asking again", self.subject, exc)
                await asyncio.sleep(backoff(failures, GONE_CHECK_SECONDS))
                continue
            if self.view.seq >= last:
                return
            await self._applied(last, GONE_CHECK_SECONDS)

    async def _last_seq(self) -> int:
        """The sequence of the last message the stream holds on the followed subjects (0: none)."""
        try:
            return (await self.bus.js.get_last_msg(OBJECTS.name, self.subject)).seq or 0
        except NotFoundError:
            return 0
