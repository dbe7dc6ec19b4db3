"""NATS connection and JetStream set-up, shared by every service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from schemas.permissions import STREAM_OWNERS, inbox_prefix
from schemas.streams import (
    ALL_STREAMS,
    DEFAULT_PARTITIONS,
    EVENTS,
    OBJECTS,
    PARTITIONS_METADATA,
    StreamSpec,
    events_stream,
)
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


def tls_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """TLS to the server, verifying its certificate against ``ca`` (the system's CAs when only a client
    certificate is given); None when nothing is set (a tls:// URL then uses the system's CAs)."""
    if not (ca or cert):
        return None
    context = ssl.create_default_context(cafile=ca or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


async def connect(
    url: str, name: str, user: str = "", password: str = "", tls: ssl.SSLContext | None = None
) -> Bus:
    """Connect as ``user`` (with its own inbox prefix, which its NATS permissions allow) or anonymously,
    over TLS when ``tls`` is given or the server requires it. ``url`` may list several servers,
    comma-separated (the nodes of a cluster): any one that answers will do, and the client moves to
    another when it goes."""

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
        tls=tls,
    )
    nats_connected.set(1)
    bus = Bus(nc, nc.jetstream(timeout=10))
    await check_server(bus)
    return bus


def streams_of(settings: Settings) -> tuple[StreamSpec, ...]:
    """Every stream, the events stream with the retention the settings give it."""
    events = events_stream(settings.events_max_age_days, settings.events_max_bytes)
    return tuple(events if spec.name == EVENTS.name else spec for spec in ALL_STREAMS)


async def connect_as(settings: Settings, name: str) -> Bus:
    """``connect`` with the settings' server, user and TLS."""
    tls = tls_context(settings.nats_ca, settings.nats_cert, settings.nats_key)
    return await connect(settings.nats_url, name, settings.nats_user, settings.nats_password, tls)


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
    """A service's connection: as its own NATS user, with the streams made sure of (created by the
    stream owners, waited for by the others)."""
    bus = await connect_as(settings, f"certcheck-{service}")
    bus.replicas = settings.stream_replicas
    try:
        if service in STREAM_OWNERS:
            await ensure_streams(bus, streams_of(settings), partitions=settings.partitions)
        else:
            await wait_for_streams(bus)
    except BaseException:
        await bus.close()
        raise
    return bus


@contextlib.asynccontextmanager
async def service_bus(settings: Settings, service: str) -> AsyncIterator[Bus]:
    """``open_bus`` for the life of a service's main: closed however the main ends."""
    bus = await open_bus(settings, service)
    try:
        yield bus
    finally:
        await bus.close()


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
        max_bytes=spec.max_bytes,
    )


STREAM_NAME_IN_USE = 10058


async def _create_or_add(bus: Bus, spec: StreamSpec, partitions: int) -> StreamInfo:
    """The stream created as specified if it is missing; else the running one with what may be added
    (``with_additions``), and whatever else differs reported, not applied: a process started with
    the default replicas=1 must not downgrade a production stream."""
    for _ in range(3):
        try:
            current: StreamInfo | None = await bus.js.stream_info(spec.name)
        except NotFoundError:
            current = None
        wanted = wanted_config(spec, bus.replicas, current, partitions)
        if current is None:
            try:
                return await bus.js.add_stream(wanted)
            except APIError as exc:  # another owner created it meanwhile: look again
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                continue
        drift = stream_drift(wanted, current.config)
        added = with_additions(current.config, drift)
        if added is not None:
            current = await bus.js.update_stream(added)
            left = stream_drift(wanted, current.config)
            done = "; ".join(str(item) for item in drift if item not in left)
            log.info("stream %s: added what this release needs (%s)", spec.name, done)
            drift = left
        _report_drift(spec.name, drift)
        return current
    raise UnsupportedServerError(f"stream {spec.name} could be neither created nor updated")


async def ensure_streams(
    bus: Bus, specs: tuple[StreamSpec, ...] = ALL_STREAMS, partitions: int = DEFAULT_PARTITIONS
) -> None:
    """Create every missing stream (with the bus's replicas) and add to the others what this release
    needs, never lowering anything; then verify the server really honours what was asked. Sets
    ``bus.partitions`` from the objects stream."""
    for spec in specs:
        _accept(bus, spec, await _create_or_add(bus, spec, partitions))


async def wait_for_streams(
    bus: Bus, specs: tuple[StreamSpec, ...] = ALL_STREAMS, timeout: float = 300.0
) -> None:
    """For a service that may not create streams: wait until the stream owner (the watcher) has
    created every one, saying so; then the same checks as ``ensure_streams``."""
    deadline = asyncio.get_running_loop().time() + timeout
    for spec in specs:
        pause = 0.2
        while True:
            try:
                info = await bus.js.stream_info(spec.name)
                break
            except NotFoundError:
                if asyncio.get_running_loop().time() > deadline:
                    raise UnsupportedServerError(
                        f"stream {spec.name} does not exist after {timeout:.0f}s: the watcher creates "
                        "the streams (or run `certcheck admin streams --apply`)"
                    ) from None
                log.info("waiting for stream %s (the watcher creates it)", spec.name)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        _accept(bus, spec, info)


def _accept(bus: Bus, spec: StreamSpec, info: StreamInfo) -> None:
    if spec.name == OBJECTS.name:
        bus.partitions = partitions_of(info)
    if spec.allow_msg_schedules and not info.config.allow_msg_schedules:
        raise UnsupportedServerError(
            f"stream {spec.name}: the server did not enable message schedules (allow_msg_schedules); "
            "use nats-server 2.12 or newer"
        )


stream_config_mismatch = Gauge(
    "certcheck_stream_config_mismatch",
    "1 while a stream's running configuration differs from what this release wants (see "
    "`certcheck admin streams`)",
    ["stream"],
)

# What ensure_streams compares, and how to read each field (the server leaves out what is unset).
_COMPARED: dict[str, Any] = {
    "description": lambda v: v or "",
    "retention": lambda v: str(getattr(v, "value", v) or "limits"),
    "storage": lambda v: str(getattr(v, "value", v) or "file"),
    "num_replicas": lambda v: int(v or 1),
    "max_msgs_per_subject": lambda v: int(v if v is not None else -1),
    "duplicate_window": lambda v: round(float(v or 0), 3),
    "max_age": lambda v: round(float(v or 0), 3),
    "max_bytes": lambda v: int(v if v is not None else -1),
    "allow_msg_schedules": bool,
    "allow_msg_ttl": bool,
    "subjects": lambda v: sorted(v or []),
}
# What a client may add to a running stream on its own: nothing it adds takes anything away.
_ADDABLE = ("description", "allow_msg_schedules", "allow_msg_ttl")


@dataclass(frozen=True)
class Drift:
    field: str
    running: Any
    wanted: Any

    def __str__(self) -> str:
        return f"{self.field}: {self.running!r} -> {self.wanted!r}"


def stream_drift(wanted: StreamConfig, running: StreamConfig) -> list[Drift]:
    """Every compared field where the running stream differs from the wanted configuration."""
    drift = []
    for name, read in _COMPARED.items():
        have, want = read(getattr(running, name)), read(getattr(wanted, name))
        if name == "subjects" and set(want) <= set(have):
            continue  # subjects a running stream has beyond ours take nothing from us
        if have != want:
            drift.append(Drift(name, have, want))
    return drift


def with_additions(running: StreamConfig, drift: list[Drift]) -> StreamConfig | None:
    """The running configuration with what may be added without an admin (None: nothing to add):
    missing subjects, features switched on, the description. A lower limit, fewer replicas, another
    retention are left for ``certcheck admin streams --apply``."""
    changes: dict[str, Any] = {}
    for item in drift:
        if item.field == "subjects":
            changes["subjects"] = sorted(set(item.running) | set(item.wanted))
        elif item.field in _ADDABLE and (item.wanted or item.field == "description"):
            changes[item.field] = item.wanted
    return dataclasses.replace(running, **changes) if changes else None


def wanted_config(
    spec: StreamSpec, replicas: int, current: StreamInfo | None, partitions: int = 0
) -> StreamConfig:
    """The configuration this release wants for a stream. The objects stream keeps the partition count
    it was created with (its metadata), whatever ``partitions`` says: a count that changed would send a
    namespace's objects to a partition its evaluator does not follow."""
    config = _stream_config(spec, replicas)
    if spec.name == OBJECTS.name:
        held = ((current.config.metadata or {}) if current else {}).get(PARTITIONS_METADATA)
        config.metadata = {PARTITIONS_METADATA: held or str(partitions or DEFAULT_PARTITIONS)}
        if held and partitions and held != str(partitions):
            log.warning(
                "the objects stream was created with %s partitions: using those, not %d", held, partitions
            )
    return config


def _report_drift(stream: str, drift: list[Drift]) -> None:
    stream_config_mismatch.labels(stream).set(1 if drift else 0)
    if drift:
        log.warning(
            "stream %s differs from what this release wants (%s): left as it is; "
            "`certcheck admin streams --apply` changes it",
            stream,
            "; ".join(map(str, drift)),
        )


def partitions_of(info: StreamInfo) -> int:
    """The partition count the objects stream holds (the default for a stream that says none)."""
    held = (info.config.metadata or {}).get(PARTITIONS_METADATA, "")
    return int(held) if held.isdigit() and int(held) > 0 else DEFAULT_PARTITIONS


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
    # A free slot is taken at once: nats-py bounds the wait for one with asyncio.wait_for, a task and a
    # timer per message (~4% of the watcher's CPU at cold start), which only a full pipeline needs.
    stall: float | None = stall_timeout if bus.js._publish_async_pending_semaphore.locked() else None
    try:
        return await bus.js.publish_async(
            subject, payload, headers=dict(headers), msg_ttl=ttl, wait_stall=stall
        )
    except BaseException:
        for token in set(bus.js._publish_async_futures) - registered:
            bus.js._publish_async_futures[token].cancel()
        raise
