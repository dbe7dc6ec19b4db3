"""The loopback ports the dev cluster listens on."""

from __future__ import annotations

import socket

from devcluster import cluster


def test_free_ports_lie_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    low, high = cluster._ephemeral_ports()
    ports = {cluster.free_port() for _ in range(50)}
    assert all(not low <= port <= high for port in ports)
    for port in list(ports)[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # free indeed
