"""Services talk to a TLS nats-server only after verifying its certificate against the CA they are
given: with it the pipeline's plumbing works, with another CA (or none) the connection is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster.cluster import NatsServer
from devcluster.pki import write_pki
from services.common import bus as bus_mod
from services.common import consume
from services.common.settings import Settings


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Path]]:
    pki = write_pki(tmp_path_factory.mktemp("nats-pki"))
    server = NatsServer(
        tmp_path_factory.mktemp("tls-nats"),
        extra_args=["--tls", "--tlscert", str(pki["server.crt"]), "--tlskey", str(pki["server.key"])],
    )
    server.start()
    try:
        yield server, pki["ca.crt"]
    finally:
        server.stop()


def test_a_service_verifying_the_servers_certificate_works_over_tls(
    tls_nats: tuple[NatsServer, Path],
) -> None:
    server, ca = tls_nats

    async def round_trip() -> bytes:
        bus = await bus_mod.connect_as(Settings(nats_url=server.address, nats_ca=str(ca)), "tls-test")
        try:
            assert bus.nc.connected_url is not None
            await bus_mod.ensure_streams(bus)
            sub = await consume.durable_consumer(bus, "CERTCHECK_DEADLETTER", "tls-probe")
            await bus.js.publish("certcheck.v1.deadletter.tls.probe", b"over tls")
            [msg] = await consume.fetch_batch(sub, 1, wait=5)
            await msg.ack()
            return bytes(msg.data)
        finally:
            await bus.close()

    assert asyncio.run(round_trip()) == b"over tls"


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_a_server_whose_certificate_does_not_verify_is_never_connected_to(
    tls_nats: tuple[NatsServer, Path], tmp_path: Path, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The client keeps trying (a service waits for its bus), saying why, and never gets through."""
    server, _ = tls_nats
    other_ca = str(write_pki(tmp_path / "other")["ca.crt"]) if trust == "another CA" else ""
    settings = Settings(nats_url=f"tls://127.0.0.1:{server.port}", nats_ca=other_ca)

    async def attempt() -> None:
        bus = await asyncio.wait_for(bus_mod.connect_as(settings, "tls-test"), timeout=5)
        await bus.close()

    with pytest.raises(TimeoutError):
        asyncio.run(attempt())
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_a_plaintext_client_is_refused_by_the_tls_server(tls_nats: tuple[NatsServer, Path]) -> None:
    """A client that ignores tls_required and speaks the protocol in the clear never gets a PONG."""
    server, _ = tls_nats

    async def speak_plaintext() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            info = await asyncio.wait_for(reader.readline(), timeout=5)
            assert b'"tls_required":true' in info
            writer.write(b'CONNECT {"verbose":false,"pedantic":false,"tls_required":false}\r\nPING\r\n')
            await writer.drain()
            received = b""
            while chunk := await asyncio.wait_for(reader.read(4096), timeout=5):
                received += chunk
            return received  # the server closed the connection
        finally:
            writer.close()

    answer = asyncio.run(speak_plaintext())
    assert b"PONG" not in answer
