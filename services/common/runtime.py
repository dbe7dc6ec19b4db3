"""Running a service: logging, the health endpoint, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.bus import UnsupportedServerError
from services.common.health import Health, serve_http
from services.common.logs import setup_logging
from services.common.settings import Settings

log = logging.getLogger(__name__)

ServiceMain = Callable[[Settings, Health, asyncio.Event], Awaitable[None]]


async def _heartbeat(health: Health) -> None:
    while True:
        health.beat()
        await asyncio.sleep(1)


async def _run(name: str, main: ServiceMain, settings: Settings) -> None:
    health = Health()
    server = serve_http(health, settings.http_host, settings.http_port) if settings.http_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    beat = asyncio.create_task(_heartbeat(health))
    log.info("starting %s", name, extra={"http_port": settings.http_port})
    try:
        await main(settings, health, stop)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        if server:
            server.shutdown()
        log.info("stopped %s", name)


async def supervise(stop: asyncio.Event, *tasks: asyncio.Task[None]) -> None:
    """Run until asked to stop or until a task fails; then cancel the rest and re-raise the failure."""
    stopping: asyncio.Task[Any] = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if task is not stopping and not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
            raise SystemExit(1)


def run_service(name: str, main: ServiceMain, argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv, prog=f"certcheck {name}")
    setup_logging(name, settings.log_level)
    try:
        asyncio.run(_run(name, main, settings))
    except UnsupportedServerError as exc:
        log.error("cannot start %s: %s", name, exc)
        raise SystemExit(2) from None
