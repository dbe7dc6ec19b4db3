"""Consuming JetStream work, one policy for every consumer of every service.

A message is decoded (one that cannot be goes to the dead-letter stream), its work is done while the
message is held (JetStream told it is in progress), then it is acknowledged. Work that fails is nak'ed
with exponential backoff, and after ``Policy.max_deliveries`` attempts dead-lettered: nothing is retried
for ever, nothing blocks the messages behind it. Work may also ask to be looked at again later (a
notification's receiver said Retry-After): that is a nak with its delay, not a failure. A message whose
body does not match its subject (``admit``) is dead-lettered as refused, unhandled and never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from prometheus_client import Counter

from schemas.streams import HDR_DEAD_REASON, HDR_DEAD_STREAM_SEQ
from schemas.subjects import deadletter_subject
from services.common.bus import Bus

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["ok", "later", "retry", "failing", "undecodable", "refused"]
# What a message's work returns: None once done (ack), or seconds after which to look again (nak).
Later = float | None
# Why a decoded message is refused (its body does not match its subject, services/domain/provenance.py),
# or None to handle it.
Admit = Callable[[str, T], str | None]

# How long a pull request waits for messages. Short: a request outlives the process that made it (the
# server delivers to it while anything has interest in its inbox, a `nats sub '>'` say), and what it
# receives then waits for the consumer's ack wait before it is delivered again.
FETCH_WAIT_SECONDS = 2.0


async def fetch_batch(sub: DurablePull, max_batch: int, wait: float) -> list[Msg]:
    """Up to ``max_batch`` messages: waits up to ``wait`` seconds for the first one, then takes whatever
    else is already available without waiting (nats-py's fetch would linger for a full batch)."""
    try:
        first = await sub.fetch(1, timeout=wait)
    except TimeoutError:
        return []
    except nats.errors.Error as exc:  # disconnected: the client reconnects on its own
        log.debug("fetch failed: %s", exc)
        await asyncio.sleep(min(wait, 1.0))
        return []
    # The consumer says how many more are waiting: ask for exactly those, so the fetch returns at once.
    pending = int(first[0].metadata.num_pending or 0)
    if max_batch <= 1 or pending == 0:
        return first
    try:
        rest = await sub.fetch(min(pending, max_batch - 1), timeout=0.05)
    except (TimeoutError, nats.errors.Error):
        rest = []
    return first + rest


dead_letters = Counter("certcheck_dead_letters_total", "Messages sent to the dead-letter stream", ["reason"])


async def dead_letter(bus: Bus, msg: Msg, reason: str, kind: str) -> None:
    """Park a message that cannot be processed (with why) and take it off its consumer for good."""
    await park(bus, msg.subject, msg.data, reason, kind, msg.metadata.sequence.stream)
    await msg.term()


async def park(bus: Bus, subject: str, data: bytes, reason: str, kind: str, stream_seq: int = 0) -> None:
    """Record, in the dead-letter stream, work on ``subject`` that was given up (with why)."""
    headers = {HDR_DEAD_REASON: reason[:500], HDR_DEAD_STREAM_SEQ: str(stream_seq)}
    await bus.js.publish(deadletter_subject(subject), data, headers=headers)
    dead_letters.labels(kind).inc()
    log.error("dead-lettered %s (seq %d): %s", subject, stream_seq, reason)


# How long a delivered message may go unacknowledged before JetStream delivers it again: what a
# message handed to a process that then died waits before another replica gets it. Work that takes
# longer keeps its messages with ``held``.
ACK_WAIT_SECONDS = 10.0


consumers_recreated = Counter(
    "certcheck_consumer_recreated_total", "Durable consumers found deleted and created again", ["consumer"]
)


class DurablePull:
    """A durable pull consumer that comes back when it was deleted (by an operator, a bad actor with
    the admin's password, a stream recreated): fetching from a deleted consumer gets no responder, for
    ever, which would stall the service without a word. It is created again, as configured, counted
    and logged; what it delivers again is work the handlers do idempotently."""

    def __init__(
        self,
        bus: Bus,
        stream: str,
        config: ConsumerConfig,
        sub: JetStreamContext.PullSubscription,
        on_recreated: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.bus, self.stream, self.config, self.sub = bus, stream, config, sub
        self.durable = config.durable_name or ""
        # What the consumer's owner does about what came while it was gone (a consumer of new
        # messages only, created again, starts after them).
        self.on_recreated = on_recreated

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        try:
            return await self.sub.fetch(batch, timeout=timeout)
        except ServiceUnavailableError:
            if not await self.recreated():
                raise  # it exists: the server is passing through a leader change, say
            return await self.sub.fetch(batch, timeout=timeout)

    async def consumer_info(self) -> ConsumerInfo:
        return await self.sub.consumer_info()

    async def recreated(self) -> bool:
        """Whether the consumer was gone, and is now created again."""
        try:
            await self.bus.js.consumer_info(self.stream, self.durable)
            return False
        except NotFoundError:
            pass
        await self.bus.js.add_consumer(self.stream, config=self.config)
        consumers_recreated.labels(self.durable).inc()
        log.error("durable consumer %s of stream %s was deleted: created again", self.durable, self.stream)
        if self.on_recreated is not None:
            await self.on_recreated()
        return True


async def durable_consumer(
    bus: Bus,
    stream: str,
    durable: str,
    filter_subject: str = ">",
    *,
    new_only: bool = False,
    ack_wait: float = ACK_WAIT_SECONDS,
    max_ack_pending: int = 5_000,
    on_recreated: Callable[[], Awaitable[object]] | None = None,
) -> DurablePull:
    """Bind to (creating on first use, and again if it is deleted) a durable pull consumer shared by
    every replica of a service. Acks are explicit: a message is acknowledged only once its effect is
    applied. A consumer an earlier release created with other limits is updated to these."""
    config = ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        filter_subject=None if filter_subject == ">" else filter_subject,
    )
    with contextlib.suppress(NotFoundError):
        existing = (await bus.js.consumer_info(stream, durable)).config
        if (existing.ack_wait, existing.max_ack_pending) != (ack_wait, max_ack_pending):
            existing.ack_wait, existing.max_ack_pending = ack_wait, max_ack_pending
            await bus.js.add_consumer(stream, config=existing)
    sub = await bus.js.pull_subscribe(filter_subject, durable=durable, stream=stream, config=config)
    return DurablePull(bus, stream, config, sub, on_recreated)


class held:  # a class named as a function: used as ``async with held(msgs)``
    """Tell JetStream, while the block runs, that ``msgs`` are still being worked on, so that a short
    ack wait redelivers quickly what a dead process held without redelivering slow work.

    Work that ends before the first beat (nearly all) costs one timer, not a task: the recorder holds a
    message like this for every result it applies."""

    __slots__ = ("_beating", "_every", "_msgs", "_timer")

    def __init__(self, msgs: Sequence[Msg], every: float = ACK_WAIT_SECONDS / 4) -> None:
        self._msgs, self._every = msgs, every
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._every, self._start_beating)

    def _start_beating(self) -> None:
        self._beating = asyncio.ensure_future(self._beat())

    async def _beat(self) -> None:
        while True:
            for msg in self._msgs:
                if not msg.is_acked:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
            await asyncio.sleep(self._every)

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating


def redelivery_delay(msg: Msg, base: float = 0.5, cap: float = 60.0) -> float:
    """Exponential back-off for a nak, from how often the message was delivered already."""
    attempts = int(msg.metadata.num_delivered or 1)
    return float(min(cap, base * 2 ** min(attempts - 1, 10)))


@dataclass(frozen=True)
class Policy:
    """How a consumer treats failing work."""

    what: str  # what a message holds, for logs and dead-letter reasons: "result", "Event", ...
    # Attempts before the message is dead-lettered; None: never, for work whose failure can only be the
    # bus's (publishing what an evaluation found), which giving up would lose while curing nothing.
    max_deliveries: int | None = 20
    retry_cap: float = 60.0  # the longest backoff between two attempts, in seconds


async def decoded(bus: Bus, msg: Msg, decode: Callable[[bytes], T], policy: Policy) -> T | None:
    """The message's content, or None once a message that cannot be decoded is dead-lettered."""
    try:
        return decode(msg.data)
    except Exception as exc:
        await dead_letter(bus, msg, f"undecodable {policy.what}: {exc}", "undecodable")
        return None


async def settle(bus: Bus, msgs: Sequence[Msg], work: Awaitable[Later], policy: Policy) -> Outcome:
    """Do ``work`` for ``msgs`` while holding them, then ack them; nak them with a delay when the work
    asks for one ("later") or failed ("retry"), dead-letter them once they failed too often ("failing")."""
    try:
        async with held(msgs):
            later = await work
    except Exception as exc:
        return await _failed(bus, msgs, policy, exc)
    for msg in msgs:
        if later is None:
            await msg.ack()
        else:
            await msg.nak(delay=later)
    return "ok" if later is None else "later"


async def _failed(bus: Bus, msgs: Sequence[Msg], policy: Policy, exc: Exception) -> Outcome:
    if not msgs:
        raise exc
    attempts = max(int(msg.metadata.num_delivered or 1) for msg in msgs)
    if policy.max_deliveries is not None and attempts >= policy.max_deliveries:
        for msg in msgs:
            reason = f"{policy.what} still failing after {attempts} attempts: {exc}"
            await dead_letter(bus, msg, reason, "failing")
        return "failing"
    delay = redelivery_delay(msgs[0], cap=policy.retry_cap)
    log.warning(
        "%s %s failed (attempt %d), again in %.1fs: %s",
        policy.what,
        msgs[0].subject if len(msgs) == 1 else f"batch of {len(msgs)}",
        attempts,
        delay,
        exc,
    )
    for msg in msgs:
        await msg.nak(delay=delay)
    return "retry"


async def newest_per_subject(msgs: Sequence[Msg]) -> list[Msg]:
    """The batch without the messages a later one on the same subject supersedes (those are acked):
    for streams where each message is complete, so only the newest of a subject matters."""
    newest: dict[str, Msg] = {}
    for msg in msgs:
        older = newest.pop(msg.subject, None)
        if older is not None:
            await older.ack()
        newest[msg.subject] = msg
    return list(newest.values())


async def consume(
    bus: Bus,
    sub: DurablePull,
    decode: Callable[[bytes], T],
    handle: Callable[[T, Msg], Awaitable[Later]],
    policy: Policy,
    *,
    batch: int,
    latest_only: bool = False,
    counted: Callable[[Outcome], None] | None = None,
    admit: Admit[T] | None = None,
) -> None:
    """Take messages for ever, each settled on its own (one that fails holds up no other): a batch is
    worked on concurrently, and the next one fetched when it is done. ``latest_only``: of several
    messages of one subject in a batch, only the newest is handled."""
    while True:
        msgs = await fetch_batch(sub, batch, wait=FETCH_WAIT_SECONDS)
        if latest_only:
            msgs = await newest_per_subject(msgs)
        outcomes = await asyncio.gather(
            *(handle_one(bus, msg, decode, handle, policy, admit) for msg in msgs)
        )
        if counted is not None:
            for outcome in outcomes:
                counted(outcome)


async def handle_one(
    bus: Bus,
    msg: Msg,
    decode: Callable[[bytes], T],
    handle: Callable[[T, Msg], Awaitable[Later]],
    policy: Policy,
    admit: Admit[T] | None = None,
) -> Outcome:
    """Decode one message and settle it with its work (dead-lettered when it cannot be decoded, or
    when ``admit`` refuses it)."""
    item = await decoded(bus, msg, decode, policy)
    if item is None:
        return "undecodable"
    refusal = admit(msg.subject, item) if admit is not None else None
    if refusal is not None:
        await dead_letter(bus, msg, f"refused {policy.what}: {refusal}", "refused")
        return "refused"
    return await settle(bus, [msg], handle(item, msg), policy)
