"""Following the objects stream into a View (the evaluator's, and the exporter's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.errors import NotFoundError
from nats.nuid import NUID
from prometheus_client import Counter, Gauge

from schemas import subjects
from schemas.messages import object_decoder
from schemas.streams import OBJECTS
from services.common.bus import Bus
from services.common.logs import object_ref, trace
from services.common.runtime import backoff
from services.domain.provenance import object_refusal
from services.domain.view import Effects, View

log = logging.getLogger(__name__)

GONE_CHECK_SECONDS = 2.0
bad_objects = Counter("certcheck_undecodable_objects_total", "Object messages that could not be decoded")
view_objects = Gauge("certcheck_view_objects", "Objects in the views of the partitions held", ["kind"])
VIEW_SIZE_SECONDS = 5.0
# The follower pulls: it asks for PULL_BATCH messages, and for more once half of them came, so what it
# holds unread is bounded (a push consumer's flow control lets the server send ~64 MiB ahead, per
# partition followed: most of a replica's memory at 100,000 certificates, when it lags behind a flood).
PULL_BATCH = 512
PULL_EXPIRES_SECONDS = 30.0  # how long one request waits on the server (then it ends with a 408)
HEARTBEAT_SECONDS = 5.0  # while a request waits, the server says so this often
SILENCE_SECONDS = 2.5 * HEARTBEAT_SECONDS  # a follower that hears nothing for this long starts over
CONSUMER_INACTIVE_SECONDS = 60.0  # a follower's consumer, left behind by a process gone, is dropped then
follower_restarts = Counter(
    "certcheck_view_follower_restarts_total",
    "Times a view follower started reading again from where its view is, by cause",
    ["cause"],
)


_names = NUID()


class _Restart(Exception):
    """The follower must start over from where its view is: a message missed, its requests or its
    consumer gone."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


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


def _pull_request(batch: int) -> bytes:
    return json.dumps(
        {
            "batch": batch,
            "expires": int(PULL_EXPIRES_SECONDS * 1e9),
            "idle_heartbeat": int(HEARTBEAT_SECONDS * 1e9),
        }
    ).encode()


def _pending_messages(msg: Msg, asked: int) -> int:
    """How many messages of the request that ended the server did not deliver (all asked, if it does
    not say)."""
    try:
        return min(asked, int((msg.headers or {}).get("Nats-Pending-Messages", asked)))
    except ValueError:
        return asked


async def _next(received: asyncio.Queue[Msg]) -> Msg:
    """The next message from the server; ``_Restart`` when even heartbeats stop coming (the connection
    was lost and the consumer with it, say)."""
    if not received.empty():
        return received.get_nowait()
    try:
        async with asyncio.timeout(SILENCE_SECONDS):
            return await received.get()
    except TimeoutError as exc:
        raise _Restart("silence", f"nothing from the server in {SILENCE_SECONDS:.0f}s") from exc


Applied = Callable[[int, Effects], None]
Refused = Callable[[Msg, str], None]


class ViewFollower:
    """Reads the objects stream (the subjects of ``subject``, say one partition's) in order, with an
    ephemeral pull consumer of its own, and folds every message into ``view``: what each asks for goes to
    ``on_applied`` (the evaluator's work), each message that cannot be applied to ``on_refused``."""

    def __init__(
        self,
        bus: Bus,
        view: View,
        subject: str = subjects.OBJECTS_ALL,
        on_applied: Applied | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        self.bus = bus
        self.view = view
        self.subject = subject
        self.on_applied = on_applied
        self.on_refused = on_refused
        self._advanced = asyncio.Condition()
        # How many messages the stream held beyond the last one read (0: everything it holds was read).
        self.behind: int | None = None
        self._received: asyncio.Queue[Msg] | None = None
        self.consumer: str | None = None  # the name of the consumer it reads from now

    async def run(self) -> None:
        """Follow the stream for ever, from where the view is (so again after a failure, or a restart)."""
        while True:
            try:
                await self._follow()
            except _Restart as restart:
                follower_restarts.labels(restart.cause).inc()
                log.info("following %s again from message %d: %s", self.subject, self.view.seq + 1, restart)

    async def _follow(self) -> None:
        """One ephemeral pull consumer from the message after the view's last, read in order: every
        message applied once. Ends with ``_Restart`` when that can no longer be told."""
        received: asyncio.Queue[Msg] = asyncio.Queue()
        self._received = received

        async def receive(msg: Msg) -> None:
            received.put_nowait(msg)

        inbox = self.bus.nc.new_inbox()
        sub = await self.bus.nc.subscribe(inbox, cb=receive, pending_bytes_limit=0)
        try:
            consumer = await self._create_consumer()
            next_request = f"$JS.API.CONSUMER.MSG.NEXT.{OBJECTS.name}.{consumer}"
            asked = 0  # messages asked for that have neither come nor been given up by the server
            delivered = 0  # the consumer's count, which each message carries: a gap is a message missed
            while True:
                if asked <= PULL_BATCH // 2:
                    await self.bus.nc.publish(next_request, _pull_request(PULL_BATCH - asked), reply=inbox)
                    asked = PULL_BATCH
                msg = await _next(received)
                status = (msg.headers or {}).get(Header.STATUS)
                if status is None:
                    asked -= 1
                    delivered += 1
                    self._take(msg, delivered)
                    async with self._advanced:
                        self._advanced.notify_all()
                elif status == "408":  # a request ended: what it did not deliver is no longer asked for
                    asked -= _pending_messages(msg, asked)
                elif status != "100":  # 100: a heartbeat; anything else (409, 503...): the consumer is gone
                    description = (msg.headers or {}).get(Header.DESCRIPTION, "")
                    raise _Restart("consumer", f"{status} {description}".strip())
        finally:
            self._received = None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _create_consumer(self) -> str:
        start = self.view.seq + 1 if self.view.seq else None
        name = _names.next().decode()
        config = ConsumerConfig(
            name=name,
            filter_subject=self.subject,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start else DeliverPolicy.ALL,
            opt_start_seq=start,
            inactive_threshold=CONSUMER_INACTIVE_SECONDS,
            mem_storage=True,
            num_replicas=1,
        )
        await self.bus.js.add_consumer(OBJECTS.name, config=config)
        self.consumer = name
        return name

    @property
    def buffered(self) -> int:
        """Messages received and not yet applied."""
        return self._received.qsize() if self._received is not None else 0

    def _take(self, msg: Msg, delivered: int) -> None:
        meta = msg.metadata
        if meta.sequence.consumer != delivered:
            raise _Restart(
                "gap", f"message {meta.sequence.consumer} of the consumer came, {delivered} was due"
            )
        seq = meta.sequence.stream
        self.behind = meta.num_pending
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
            self.view.seq = max(self.view.seq, seq)
            if self.on_refused is not None:
                self.on_refused(msg, f"{problem} object message: {exc}"[:500])
            return
        if self.on_applied is not None:
            self.on_applied(seq, effects)

    async def _applied(self, seq: int, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout), self._advanced:
                await self._advanced.wait_for(lambda: self.view.seq >= seq)
        except TimeoutError:
            return False
        return True

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
