"""The production layout's bus: a 3-node JetStream cluster with every stream and bucket replicated 3 times
(k8s/overlays/prod sets CERTCHECK_STREAM_REPLICAS=3). Three real nats-servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from devcluster.cluster import NatsServer, cluster_formed, meta_leader, nats_cluster
from schemas.streams import ALL_STREAMS, NOTIFIER_STATE_BUCKET, TRIGGERS
from services.common import bus as bus_mod
from tests import subjects as test_subjects
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServer]]:
    servers = nats_cluster(Path(tmp_path_factory.mktemp("nats-cluster")), 3)
    for server in servers:
        server.start()
    wait_for(lambda: cluster_formed(servers), timeout=30, what="a JetStream cluster of three")
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def replicated_setup(url: str) -> dict[str, int]:
    bus = await bus_mod.connect(url, "cluster-test")
    try:
        bus.replicas = 3  # as CERTCHECK_STREAM_REPLICAS=3 sets it in the prod overlay
        await bus_mod.ensure_streams(bus)
        await bus_mod.key_value(bus, NOTIFIER_STATE_BUCKET)
        await bus.js.publish(test_subjects.due_subject("ns", "c"), b"{}", stream=TRIGGERS.name)
        names = [s.name for s in ALL_STREAMS] + [f"KV_{NOTIFIER_STATE_BUCKET}"]
        replicas = {}
        for name in names:
            info = await bus.js.stream_info(name)
            replicas[name] = info.config.num_replicas or 0
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name
        return replicas
    finally:
        await bus.close()


def test_streams_and_buckets_get_three_replicas_on_a_three_node_cluster(cluster: list[NatsServer]) -> None:
    replicas = asyncio.run(replicated_setup(cluster[0].url))
    assert set(replicas.values()) == {3}, replicas


def test_the_bus_keeps_working_with_one_server_down(cluster: list[NatsServer]) -> None:
    cluster[2].kill()
    # The two left re-elect a meta leader if they lost it (seconds); then the streams carry on.
    wait_for(lambda: (leader := meta_leader(cluster[1])) != "nats-2" and leader, timeout=30, what="a leader")

    async def publish_and_read() -> int:
        bus = await bus_mod.connect(cluster[1].url, "cluster-test")
        try:
            for _ in range(100):  # a stream whose leader was on the lost server elects another first
                try:
                    await bus.js.publish(
                        test_subjects.due_subject("ns", "after-loss"), b"{}", stream=TRIGGERS.name
                    )
                    break
                except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError, TimeoutError):
                    await asyncio.sleep(0.2)
            message = await bus.js.get_last_msg(TRIGGERS.name, test_subjects.due_subject("ns", "after-loss"))
            return int(message.seq or 0)
        finally:
            await bus.close()

    assert asyncio.run(publish_and_read()) > 0
