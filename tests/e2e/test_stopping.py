"""Stopping cleanly: every service exits 0 within 5 s of SIGTERM, busy or starting; `make up` (python -m
devcluster) stops everything within 10 s of Ctrl-C and leaves no process behind, even when killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devcluster.certs import expiring_in
from devcluster.stack import REPO, SERVICES, Stack
from tests.conftest import Cluster, wait_for

STOP_WITHIN_SECONDS = 5.0


def stop_time(stack: Stack, name: str) -> tuple[float, int | None]:
    process = stack.services[name]
    assert process.proc is not None and process.running
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    try:
        code = process.proc.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        code = None
    return time.monotonic() - started, code


def assert_stops_cleanly_and_restart(stack: Stack, name: str) -> None:
    try:
        elapsed, code = stop_time(stack, name)
    finally:
        stack.start_service(name, stack.extra_env.get(name, {}))
    assert code == 0, f"{name} exited with {code}"
    assert elapsed < STOP_WITHIN_SECONDS, f"{name} took {elapsed:.1f}s to stop"


@pytest.mark.parametrize("name", SERVICES)
def test_a_busy_service_exits_0_within_5_seconds_of_sigterm(
    name: str, stack: Stack, cluster: Cluster, namespace: str
) -> None:
    cert, key = expiring_in(10)
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "stop"}})
    count = 150

    def create() -> None:
        for index in range(count):
            cluster.create_tls_secret(namespace, f"s{index}", cert, key, labels={"app": "stop"})

    creating = threading.Thread(target=create)
    creating.start()
    try:  # changes flowing through every service while it stops
        wait_for(
            lambda: cluster.status(namespace, "c").get("targetSecretsCount", 0) > 10, what="work flowing"
        )
        elapsed, code = stop_time(stack, name)
    finally:
        creating.join()
        stack.start_service(name, stack.extra_env.get(name, {}))
    assert code == 0, f"{name} exited with {code}"
    assert elapsed < STOP_WITHIN_SECONDS, f"{name} took {elapsed:.1f}s to stop"
    wait_for(
        lambda: cluster.status(namespace, "c").get("targetSecretsCount") == count,
        timeout=30,
        what="all recorded",
    )


@pytest.mark.parametrize("name", SERVICES)
def test_an_idle_service_exits_0_within_5_seconds_of_sigterm(name: str, stack: Stack) -> None:
    time.sleep(6)  # every consumer parked in a long poll, every timer waiting
    assert_stops_cleanly_and_restart(stack, name)


@pytest.mark.parametrize("name", SERVICES)
def test_a_starting_service_exits_0_within_5_seconds_of_sigterm(name: str, stack: Stack) -> None:
    stack.services[name].stop()
    stack.start_service(name, stack.extra_env.get(name, {}), wait=False)
    time.sleep(0.3)  # connecting, catching up or sweeping: not ready yet
    assert_stops_cleanly_and_restart(stack, name)


def descendants(pid: int) -> set[int]:
    """Every living process whose parent chain leads to ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def start_devcluster(tmp_path: Path, split: bool = False) -> tuple[subprocess.Popen[bytes], set[int]]:
    log = (tmp_path / "up.log").open("wb")
    mode = ["--split"] if split else []
    up = subprocess.Popen(
        [sys.executable, "-m", "devcluster", "--no-demo", *mode, "--state-dir", str(tmp_path / "state")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wait_for(
        lambda: "Press Ctrl-C" in (tmp_path / "up.log").read_text() or up.poll() is not None,
        timeout=120,
        what="make up running",
    )
    assert up.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
    children = descendants(up.pid)
    # etcd, kube-apiserver, nats-server and the services (or the one running them all)
    assert len(children) >= 3 + (len(SERVICES) if split else 1)
    return up, children


@pytest.mark.parametrize("split", [False, True], ids=["one-process", "split"])
def test_make_up_stops_everything_within_10_seconds_of_ctrl_c(tmp_path: Path, split: bool) -> None:
    up, children = start_devcluster(tmp_path, split)
    started = time.monotonic()
    up.send_signal(signal.SIGINT)
    code = up.wait(30)
    elapsed = time.monotonic() - started
    left = alive(children)
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert code == 0
    assert left == set()


def test_nothing_make_up_started_outlives_it_when_it_is_killed(tmp_path: Path) -> None:
    up, children = start_devcluster(tmp_path)
    up.kill()
    up.wait(10)
    wait_for(lambda: not alive(children), timeout=10, what="every child gone")
