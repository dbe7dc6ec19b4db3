"""/healthz follows the event loop's heartbeat; /readyz the service's own readiness."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request

from services.common.health import Health, serve_http
from services.common.runtime import _heartbeat


def status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_healthz_fails_once_the_event_loop_stalls_and_recovers_when_it_beats_again() -> None:
    health = Health(stale_after_seconds=1.5)  # the heartbeat comes every second
    server = serve_http(health, "127.0.0.1", 0)
    port = server.server_address[1]
    try:

        async def run_then_stall() -> tuple[int, int, int]:
            beating = asyncio.create_task(_heartbeat(health))
            await asyncio.sleep(2.2)  # a loop that runs keeps beating
            running = await asyncio.to_thread(status, port, "/healthz")
            during: list[int] = []
            probe = threading.Timer(1.9, lambda: during.append(status(port, "/healthz")))
            probe.start()
            time.sleep(2.5)  # a blocking call: the loop stalls, and is probed meanwhile
            probe.join()
            await asyncio.sleep(0.1)  # it runs again: the heartbeat comes back at once
            after = await asyncio.to_thread(status, port, "/healthz")
            beating.cancel()
            return running, during[0], after

        assert asyncio.run(run_then_stall()) == (200, 503, 200)
    finally:
        server.shutdown()


def test_readyz_says_why_until_the_service_is_ready() -> None:
    health = Health()
    server = serve_http(health, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        assert status(port, "/readyz") == 503
        health.set_ready(True)
        assert status(port, "/readyz") == 200
    finally:
        server.shutdown()


def test_a_process_of_several_parts_is_ready_once_every_part_is_and_names_those_that_are_not() -> None:
    whole = Health()
    watcher, evaluator = whole.part("watcher"), whole.part("evaluator")
    watcher.set_ready(True)
    assert (whole.ready, whole.reason) == (False, "evaluator: starting")
    evaluator.set_ready(True)
    assert whole.ready
    evaluator.set_ready(False, "restarting")
    assert (whole.ready, whole.reason) == (False, "evaluator: restarting")


def test_metrics_can_be_asked_for_one_family_only() -> None:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("certcheck_wanted_total", "w", registry=registry).inc()
    Counter("certcheck_other_total", "o", registry=registry).inc()
    server = serve_http(Health(), "127.0.0.1", 0, registry)
    port = server.server_address[1]
    try:
        url = f"http://127.0.0.1:{port}/metrics?name[]=certcheck_wanted_total"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            everything = response.read().decode()
    finally:
        server.shutdown()
    assert "certcheck_wanted_total 1.0" in text and "certcheck_other" not in text
    assert "certcheck_other_total 1.0" in everything
