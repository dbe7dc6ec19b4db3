"""``certcheck admin streams [--apply]``: the one step that changes a running stream's configuration.

Services never lower a running stream's limits or replicas (``ensure_streams`` only creates what is
missing and adds what a release needs); this command shows how each stream differs from what this
release wants, with the settings given (``--stream-replicas``, ``--partitions``...), and with
``--apply`` makes it so. Run it as the NATS admin user (no service user may update a stream).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from nats.js.errors import NotFoundError

from services.common import bus as bus_mod
from services.common.settings import Settings

USAGE = "usage: certcheck admin streams [--apply] [service settings: --nats-url, --nats-user, ...]"


async def streams(settings: Settings, apply: bool) -> int:
    """Print each stream's difference; apply it with ``apply``. Returns how many streams differ(ed)."""
    bus = await bus_mod.connect_as(settings, "certcheck-admin")
    differing = 0
    try:
        for spec in bus_mod.streams_of(settings):
            try:
                current = await bus.js.stream_info(spec.name)
            except NotFoundError:
                current = None
            wanted = bus_mod.wanted_config(spec, settings.stream_replicas, current, settings.partitions)
            if current is None:
                differing += 1
                print(f"{spec.name}: missing")
                if apply:
                    await bus.js.add_stream(wanted)
                    print(f"{spec.name}: created")
                continue
            drift = bus_mod.stream_drift(wanted, current.config)
            if not drift:
                print(f"{spec.name}: as wanted")
                continue
            differing += 1
            for item in drift:
                print(f"{spec.name}: {item}")
            if apply:
                wanted.subjects = sorted(set(wanted.subjects or []) | set(current.config.subjects or []))
                await bus.js.update_stream(wanted)
                print(f"{spec.name}: updated")
    finally:
        await bus.close()
    return differing


def run(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "streams":
        sys.exit(USAGE)
    parser = argparse.ArgumentParser(prog="certcheck admin streams", add_help=False)
    parser.add_argument("--apply", action="store_true")
    known, rest = parser.parse_known_args(argv[1:])
    settings = Settings.from_args(rest, prog="certcheck admin streams")
    differing = asyncio.run(streams(settings, known.apply))
    sys.exit(1 if differing and not known.apply else 0)
