"""``certcheck events`` and ``certcheck history``: the public expiry events, for people.

``certcheck events [--namespace NS] [--type TYPE] [--object KIND/NAME] [--since WHEN] [--follow] [--json]``
prints the events of the stream CERTCHECK_EVENTS (filtered on the subject's tokens; ``--since`` replays
from a time, RFC 3339 or a duration such as ``2h`` or ``30d``; without it, from the start), then stops
once it has caught up, or with ``--follow`` waits for more.

``certcheck history NAMESPACE/NAME [--kind secret|configmap]`` prints the timeline of one object's
certificates: when each was first seen, every state change, every rotation, its removal.

Both read as any subscriber does (the NATS user ``subscriber`` is enough): a consumer of their own,
nothing written. Like ``services/admin.py``, a tool beside the services, not one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TextIO

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.events import CertificateEvent
from schemas.streams import EVENTS
from services.common import bus as bus_mod
from services.common.settings import Settings

USAGE = (
    "usage: certcheck events [--namespace NS] [--type TYPE] [--object KIND/NAME] [--since WHEN] "
    "[--follow] [--json]\n       certcheck history NAMESPACE/NAME [--kind secret|configmap]"
)
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_decode = msgspec.json.Decoder(CertificateEvent)


@dataclass(frozen=True)
class Query:
    cluster: str = "*"
    namespace: str = "*"
    type: str = "*"
    object_kind: str = "*"
    object_name: str = ">"
    since: datetime | None = None
    follow: bool = False

    @property
    def filter_subject(self) -> str:
        return (
            f"{subjects.PREFIX}.events.{self.cluster}.{self.namespace}.{self.type}."
            f"{self.object_kind}.{self.object_name}"
        )


def parse_since(text: str, now: datetime) -> datetime:
    """``2h``, ``30d``... before ``now``, or an RFC 3339 time."""
    found = _DURATION.match(text.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def read_events(bus: bus_mod.Bus, query: Query) -> AsyncIterator[Msg]:
    """The stream's messages matching the query, in order; ends once caught up unless following.

    An ephemeral pull consumer, gone 30 s after its last use: nats-py's ordered consumer restarts from
    the stream's first message when it resets, which would ignore ``--since``."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if query.since else DeliverPolicy.ALL,
        opt_start_time=query.since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await bus.js.pull_subscribe(query.filter_subject, stream=EVENTS.name, config=config)
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=5.0 if query.follow else 2.0)
            except TimeoutError:
                if query.follow:
                    continue
                return  # nothing (more) matches
            for msg in msgs:
                # The server starts at ``since``, but not when it is past the stream's last message
                # (nats-server 2.12 then starts at the first): the time is checked here as well.
                if query.since is None or msg.metadata.timestamp >= query.since:
                    yield msg
            if not query.follow and not msgs[-1].metadata.num_pending:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def describe(msg: Msg) -> str:
    """One readable line for an event."""
    headers = msg.headers or {}
    event = _decode.decode(msg.data)
    kind = headers.get("ce-type", "?").removeprefix("dev.certcheck.certificate.").removesuffix(".v1")
    where = f"{event.namespace}/{event.object_kind}/{event.object_name} {event.key}[{event.index}]"
    state = f"{event.previous_state} -> {event.state}" if event.previous_state else event.state
    cert = event.certificate
    facts = f" notAfter {cert.not_after} sha256 {cert.fingerprint_sha256[:12]}" if cert else ""
    if event.previous_certificate is not None:
        facts += f" (was sha256 {event.previous_certificate.fingerprint_sha256[:12]})"
    why = f" because {event.removed_because}" if event.removed_because else ""
    reason = f" ({event.reason})" if event.reason else ""
    return (
        f"{headers.get('ce-time', '')}  {kind:<12} {where}  CertCheck {event.certcheck}: "
        f"{state}{reason}{facts}{why}"
    )


async def print_events(settings: Settings, query: Query, as_json: bool, out: TextIO) -> int:
    bus = await bus_mod.connect_as(settings, "certcheck-events")
    count = 0
    try:
        async for msg in read_events(bus, query):
            count += 1
            if as_json:
                headers = {k: v for k, v in (msg.headers or {}).items() if k.startswith("ce-")}
                line = msgspec.json.encode({"subject": msg.subject, **headers, "data": msgspec.Raw(msg.data)})
                out.write(line.decode() + "\n")
            else:
                out.write(describe(msg) + "\n")
            out.flush()
    finally:
        await bus.close()
    return count


def _split_object(text: str) -> tuple[str, str]:
    kind, _, name = text.partition("/")
    if not name:
        raise SystemExit(f"expected KIND/NAME, got {text!r}")
    return kind.lower(), name


def run(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("events", "history"):
        sys.exit(USAGE)
    command, rest = args[0], args[1:]
    parser = argparse.ArgumentParser(prog=f"certcheck {command}", add_help=False)
    if command == "history":
        parser.add_argument("object")
        parser.add_argument("--kind", default="secret", choices=["secret", "configmap"])
    else:
        parser.add_argument("--namespace", default="*")
        parser.add_argument("--type", default="*")
        parser.add_argument("--object", default="")
        parser.add_argument("--cluster", default="*")
        parser.add_argument("--since", default="")
        parser.add_argument("--follow", action="store_true")
    parser.add_argument("--json", action="store_true")
    known, remaining = parser.parse_known_args(rest)
    settings = Settings.from_args(remaining, prog=f"certcheck {command}")
    if command == "history":
        namespace, _, name = known.object.partition("/")
        if not name:
            sys.exit(f"expected NAMESPACE/NAME, got {known.object!r}")
        query = Query(namespace=namespace, object_kind=known.kind, object_name=name)
    else:
        kind, name = _split_object(known.object) if known.object else ("*", ">")
        since = parse_since(known.since, datetime.now(UTC)) if known.since else None
        query = Query(known.cluster, known.namespace, known.type, kind, name, since, known.follow)
    count = asyncio.run(print_events(settings, query, known.json, sys.stdout))
    if command == "history" and not count:
        print(f"no events for {known.kind} {known.object}", file=sys.stderr)
