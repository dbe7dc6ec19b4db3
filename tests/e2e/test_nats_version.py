"""certcheck refuses a nats-server that would silently ignore message schedules."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import binaries
from devcluster.cluster import NatsServer
from devcluster.stack import REPO
from services.common import bus as bus_mod


@pytest.fixture(scope="module")
def old_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(Path(tmp_path_factory.mktemp("old-nats")), binary=binaries.old_nats_server())
    server.start()
    yield server
    server.stop()


def test_connecting_to_nats_2_9_fails_with_a_clear_error(old_nats: NatsServer) -> None:
    async def connect() -> None:
        bus = await bus_mod.connect(old_nats.url, "version-test")
        await bus.close()

    with pytest.raises(bus_mod.UnsupportedServerError) as raised:
        asyncio.run(connect())
    message = str(raised.value)
    assert (
        "nats-server 2.9.10 at 127.0.0.1:" in message
        and "is too old" in message
        and "2.12.0 or newer" in message
        and "schedules" in message
    )


def test_a_service_started_against_nats_2_9_exits_and_says_why(old_nats: NatsServer, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.evaluator", "--nats-url", old_nats.url, "--http-port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    [fatal] = [line for line in result.stderr.splitlines() if '"level":"error"' in line]
    assert "cannot start evaluator: nats-server 2.9.10" in fatal and "2.12.0 or newer" in fatal
    assert "Traceback" not in result.stderr
