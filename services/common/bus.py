"""NATS connection and JetStream set-up, shared by every service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from schemas.permissions import inbox_prefix
from schemas.streams import (
    ALL_STREAMS,
    DEFAULT_PARTITIONS,
    HDR_DEAD_REASON,
    HDR_DEAD_STREAM_SEQ,
    OBJECTS,
    PARTITIONS_METADATA,
    StreamSpec,
)
from schemas.subjects import deadletter_subject
from services.common.settings import Settings

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 12, 0)
MIN_API_LEVEL = 2

nats_connected = Gauge("certcheck_nats_connected", "1 while the NATS connection is up")


class UnsupportedServerError(RuntimeError):
    """The NATS server cannot run certcheck (too old, or JetStream features missing)."""


@dataclass
class Bus:
    nc: NATS
    js: JetStreamContext
    replicas: int = 1  # copies of each stream and bucket it creates (3 on a 3-node NATS cluster)
    # How many partitions the namespaces are spread over: the objects stream's, once ensure_streams ran.
    partitions: int = DEFAULT_PARTITIONS

    async def close(self, timeout: float = 1.0) -> None:
        """Send what is buffered, then close. Not a drain: that waits (30 s by default) for messages
        nobody will consume any more; JetStream redelivers whatever was not acknowledged."""
        if self.nc.is_closed:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.flush(), timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), timeout)


async def connect(url: str, name: str, user: str = "", password: str = "") -> Bus:
    """Connect as ``user`` (with its own inbox prefix, which its NATS permissions allow) or anonymously.
    ``url`` may list several servers, comma-separated (the nodes of a cluster): any one that answers
    will do, and the client moves to another when it goes."""

    async def on_disconnect() -> None:
        nats_connected.set(0)
        log.warning("disconnected from NATS")

    async def on_reconnect() -> None:
        nats_connected.set(1)
        log.info("reconnected to NATS")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    nc = await nats.connect(
        [server.strip() for server in url.split(",") if server.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        connect_timeout=5,
        user=user or None,
        password=password or None,
        inbox_prefix=inbox_prefix(user) if user else "_INBOX",
    )
    nats_connected.set(1)
    bus = Bus(nc, nc.jetstream(timeout=10))
    await check_server(bus)
    return bus


async def check_server(bus: Bus) -> None:
    """Refuse servers that would silently ignore message schedules (anything before 2.12)."""
    version = bus.nc.connected_server_version
    found = (version.major, version.minor, version.patch)
    shown = ".".join(map(str, found))
    url = bus.nc.connected_url
    where = f"{url.hostname}:{url.port}" if url else "?"  # never the netloc: it may hold a password
    if found < MIN_SERVER_VERSION:
        needed = ".".join(map(str, MIN_SERVER_VERSION))
        raise UnsupportedServerError(
            f"nats-server {shown} at {where} is too old: certcheck needs {needed} or newer for JetStream "
            "message schedules (older servers accept and silently ignore them)"
        )
    info = await bus.js.account_info()
    level = info.api.level or 0
    if level < MIN_API_LEVEL:
        raise UnsupportedServerError(
            f"nats-server {shown} reports JetStream API level {level}; certcheck needs {MIN_API_LEVEL}+"
        )


async def open_bus(settings: Settings, service: str) -> Bus:
    """A service's connection: as its own NATS user, with the streams made sure of."""
    bus = await connect(settings.nats_url, f"certcheck-{service}", settings.nats_user, settings.nats_password)
    bus.replicas = settings.stream_replicas
    try:
        await ensure_streams(bus, partitions=settings.partitions)
    except BaseException:
        await bus.close()
        raise
    return bus


async def key_value(bus: Bus, bucket: str, description: str = "") -> KeyValue:
    """A file-backed KV bucket, created on first use (with the bus's replicas)."""
    try:
        return await bus.js.key_value(bucket)
    except BucketNotFoundError:
        return await bus.js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                description=description,
                history=1,
                storage=StorageType.FILE,
                replicas=bus.replicas,
            )
        )


def _stream_config(spec: StreamSpec, replicas: int) -> StreamConfig:
    return StreamConfig(
        num_replicas=replicas,
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.WORK_QUEUE if spec.work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        allow_msg_schedules=spec.allow_msg_schedules or None,
        allow_msg_ttl=spec.allow_msg_ttl or None,
        duplicate_window=spec.duplicate_window_seconds,
        max_age=spec.max_age_seconds,
    )


STREAM_NAME_IN_USE = 10058


async def _create_or_update(bus: Bus, spec: StreamSpec, partitions: int) -> StreamInfo:
    """The stream as specified. The objects stream keeps the partition count it was created with (its
    metadata), whatever ``partitions`` says: a count that changed would send a namespace's objects
    to a partition its evaluator does not follow."""
    config = _stream_config(spec, bus.replicas)
    for _ in range(3):
        try:
            current: StreamInfo | None = await bus.js.stream_info(spec.name)
        except NotFoundError:
            current = None
        if spec.name == OBJECTS.name:
            held = ((current.config.metadata or {}) if current else {}).get(PARTITIONS_METADATA)
            config.metadata = {PARTITIONS_METADATA: held or str(partitions)}
            if held and held != str(partitions):
                log.warning(
                    "the objects stream was created with %s partitions: using those, not %d", held, partitions
                )
        if current is not None:
            return await bus.js.update_stream(config)
        try:
            return await bus.js.add_stream(config)
        except APIError as exc:  # another service created it meanwhile: update that one
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
    raise UnsupportedServerError(f"stream {spec.name} could be neither created nor updated")


async def ensure_streams(
    bus: Bus, specs: tuple[StreamSpec, ...] = ALL_STREAMS, partitions: int = DEFAULT_PARTITIONS
) -> None:
    """Create or update every stream (with the bus's replicas), then verify the server really honours
    what was asked. Sets ``bus.partitions`` from the objects stream."""
    for spec in specs:
        info = await _create_or_update(bus, spec, partitions)
        if spec.name == OBJECTS.name:
            bus.partitions = partitions_of(info)
        if spec.allow_msg_schedules and not info.config.allow_msg_schedules:
            raise UnsupportedServerError(
                f"stream {spec.name}: the server did not enable message schedules (allow_msg_schedules); "
                "use nats-server 2.12 or newer"
            )


def partitions_of(info: StreamInfo) -> int:
    """The partition count the objects stream holds (the default for a stream that says none)."""
    held = (info.config.metadata or {}).get(PARTITIONS_METADATA, "")
    return int(held) if held.isdigit() and int(held) > 0 else DEFAULT_PARTITIONS


# How long a pull request waits for messages. Short: a request outlives the process that made it (the
# server delivers to it while anything has interest in its inbox, a `nats sub '>'` say), and what it
# receives then waits for the consumer's ack wait before it is delivered again.
FETCH_WAIT_SECONDS = 2.0


async def fetch_batch(sub: JetStreamContext.PullSubscription, max_batch: int, wait: float) -> list[Msg]:
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


class TooLargeError(Exception):
    """A message larger than the server accepts: publishing it again cannot succeed."""


async def publish_pipelined(
    bus: Bus,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    ttl: float | None = None,
    stall_timeout: float = 5.0,
) -> asyncio.Future[Any]:
    """Publish without waiting for the acknowledgement: the future it returns resolves with it.

    nats-py's futures never time out (the caller must cancel them, which frees their slot), a send
    that raises leaves its future registered for ever, and a full pipeline waits for a slot for ever:
    this bounds the wait, refuses an oversized message up front, and cancels the future of a send that
    failed. The headers are copied (nats-py adds to them).
    """
    if len(payload) + sum(len(k) + len(v) + 4 for k, v in headers.items()) > bus.nc.max_payload:
        raise TooLargeError(f"{len(payload)} bytes, the server takes at most {bus.nc.max_payload}")
    registered = set(bus.js._publish_async_futures)
    try:
        return await bus.js.publish_async(
            subject, payload, headers=dict(headers), msg_ttl=ttl, wait_stall=stall_timeout
        )
    except BaseException:
        for token in set(bus.js._publish_async_futures) - registered:
            bus.js._publish_async_futures[token].cancel()
        raise


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


async def durable_consumer(
    bus: Bus,
    stream: str,
    durable: str,
    filter_subject: str = ">",
    *,
    new_only: bool = False,
    ack_wait: float = ACK_WAIT_SECONDS,
    max_ack_pending: int = 5_000,
) -> JetStreamContext.PullSubscription:
    """Bind to (creating on first use) a durable pull consumer shared by every replica of a service.
    Acks are explicit: a message is acknowledged only once its effect is applied. A consumer an earlier
    release created with other limits is updated to these."""
    config = ConsumerConfig(
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
    return await bus.js.pull_subscribe(filter_subject, durable=durable, stream=stream, config=config)


@contextlib.asynccontextmanager
async def held(msgs: Sequence[Msg], every: float = ACK_WAIT_SECONDS / 4) -> AsyncIterator[None]:
    """Tell JetStream, while the block runs, that ``msgs`` are still being worked on, so that a short
    ack wait redelivers quickly what a dead process held without redelivering slow work."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            for msg in msgs:
                if not msg.is_acked:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def redelivery_delay(msg: Msg, base: float = 0.5, cap: float = 60.0) -> float:
    """Exponential back-off for a nak, from how often the message was delivered already."""
    attempts = int(msg.metadata.num_delivered or 1)
    return float(min(cap, base * 2 ** min(attempts - 1, 10)))
