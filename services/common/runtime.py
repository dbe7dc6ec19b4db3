"""Running a service: logging, the health endpoint, and a clean stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.bus import UnsupportedServerError
from services.common.health import Health, serve_http
from services.common.logs import setup_logging
from services.common.settings import Settings

log = logging.getLogger(__name__)

ServiceMain = Callable[[Settings, Health, asyncio.Event], Coroutine[Any, Any, None]]


async def _heartbeat(health: Health) -> None:
    while True:
        health.beat()
        await asyncio.sleep(1)


STOP_GRACE_SECONDS = 3.0  # to finish in-flight work after SIGTERM; what is not acked is redelivered
RESTART_MAX_DELAY_SECONDS = 10.0


def backoff(failures: int, cap: float) -> float:
    """Seconds to wait after ``failures`` failures running: 0.5 s doubling, at most ``cap``."""
    return float(min(cap, 0.5 * 2 ** min(failures, 16)))


RESILIENT_MAX_DELAY_SECONDS = 30.0
RESTART_RESET_SECONDS = 30.0  # a main that ran this long before failing starts again without backoff
EXIT_DEADLINE_SECONDS = 4.5  # whatever still runs then (a blocked thread), the process exits anyway


async def _run(name: str, main: ServiceMain, settings: Settings) -> None:
    health = Health()
    server = serve_http(health, settings.http_host, settings.http_port) if settings.http_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopping, stop)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    beat = asyncio.create_task(_heartbeat(health))
    log.info("starting %s", name, extra={"http_port": settings.http_port})
    stopped = asyncio.create_task(stop.wait())
    failures = 0
    while True:
        started = time.monotonic()
        running = asyncio.create_task(main(settings, health, stop), name="main")
        await asyncio.wait([running, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() or not running.done() or running.cancelled():
            break
        exc = running.exception()
        if exc is None or isinstance(exc, UnsupportedServerError) or not isinstance(exc, Exception):
            break
        # Starting failed (the bus or the API server out of reach), or a watcher lost its lease: start
        # again, as a Deployment would, backing off only while it keeps failing right away.
        failures = failed_again(failures, started)
        delay = backoff(failures, RESTART_MAX_DELAY_SECONDS)
        log.warning("%s failed to start (%r), again in %.1fs", name, exc, delay)
        health.set_ready(False, "restarting")
        await asyncio.wait([stopped], timeout=delay)
        if stop.is_set():
            break
    try:
        if not running.done():
            # main sees ``stop`` once it supervises its tasks; still starting up, it is cancelled now.
            await asyncio.wait([running], timeout=STOP_GRACE_SECONDS if health.ready else 0.1)
            running.cancel()
        if stop.is_set() and running.done() and not running.cancelled() and running.exception():
            log.info("stopped while starting again: %r", running.exception())
        else:
            with contextlib.suppress(asyncio.CancelledError):
                await running
    finally:
        stopped.cancel()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        if server:
            server.shutdown()
        log.info("stopped %s", name)


def _dump_tasks() -> None:
    """SIGUSR1: log where every task is waiting (what a stuck service is stuck on)."""
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        log.warning("task %s: %s", task.get_name(), stack.getvalue())


def _stopping(stop: asyncio.Event) -> None:
    if not stop.is_set():
        log.info("stopping")
        stop.set()
        # A thread blocked in a request (the Kubernetes client's are synchronous) cannot be cancelled:
        # the deadline below ends the process however far the stop got.
        threading.Thread(target=_exit_after, args=(EXIT_DEADLINE_SECONDS,), daemon=True).start()


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    log.warning("still stopping after %.1fs: exiting now (JetStream redelivers what was not acked)", seconds)
    _exit(0)


def _exit(code: int) -> None:
    logging.shutdown()
    os._exit(code)


def failed_again(failures: int, started: float) -> int:
    """The failure count once a run begun at ``started`` (monotonic) failed: a run that lasted
    RESTART_RESET_SECONDS was healthy, so its failure is the first one again."""
    return failures + 1 if time.monotonic() - started < RESTART_RESET_SECONDS else 1


async def resilient(name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a consume loop for ever: one that fails (the bus gone while it binds or fetches) starts
    again after a backoff, instead of ending the service. The backoff grows only while it keeps
    failing soon after starting."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await work()
            return
        except Exception as exc:
            failures = failed_again(failures, started)
            delay = backoff(failures, RESILIENT_MAX_DELAY_SECONDS)
            log.warning("%s failed, starting it again in %.1fs: %r", name, delay, exc)
            await asyncio.sleep(delay)


def report_failure(task: asyncio.Task[Any]) -> None:
    """A done callback for a task nobody awaits until it is cancelled: a failure is logged when it
    happens, not when (if ever) the task is collected."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with a failure", task.get_name(), exc_info=task.exception())


def spawn(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task that runs until cancelled, its failure logged when it happens (``report_failure``)."""
    task = asyncio.create_task(work, name=name)
    task.add_done_callback(report_failure)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task and return once it has stopped, whatever it ended with."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


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


# The cyclic collector's youngest generation is collected every 700 allocations by default, and each
# older collection walks every object the services keep (a view of ten thousand Secrets): a fifth of an
# evaluation's CPU. What the services throw away is freed by reference counting; few cycles remain.
GC_THRESHOLDS = (20_000, 50, 100)


def tune_collector() -> None:
    """Collect cycles less often, and never walk again what importing the modules created."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_service(name: str, main: ServiceMain, argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv, prog=f"certcheck {name}")
    setup_logging(name, settings.log_level)
    tune_collector()
    code = 0
    try:
        asyncio.run(_run(name, main, settings))
    except UnsupportedServerError as exc:
        log.error("cannot start %s: %s", name, exc)
        code = 2
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("%s failed", name)
        code = 1
    # Not a normal interpreter exit: that joins every worker thread, and one blocked in a request
    # would hold the process up to its timeout.
    _exit(code)
