"""Self-fencing of a real watcher whose lease renewals really fail, on ``watcher_stack``.

The lease is a key in the ``certcheck_leases`` NATS KV bucket (services/common/lease.py), not a Kubernetes
Lease: the watcher has no RBAC on leases. docs/architecture.md ("Many replicas") promises that the holder
renews every third of the duration, "stops acting if it cannot renew within two thirds of it", and that a
standby takes over once a renewal is a whole duration old. Here renewals fail because the server refuses
them (the bucket's stream takes no message that large), or because someone else took the lease; the rest
of the bus works throughout, so a watcher that did not fence itself would go on publishing."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import msgspec
import pytest
from nats.js.api import StreamConfig

from devcluster.cluster import ServiceProcess
from devcluster.stack import Stack
from schemas.streams import LEASE_BUCKET
from schemas.subjects import KIND_SECRET as SECRET
from services.common.lease import LeaseRecord
from tests.conftest import Cluster, wait_for
from tests.e2e.watchers import (  # noqa: F401 (fixtures)
    ObjectsStream,
    cluster,
    create_secret,
    leader,
    ns,
    objects,
    stack,
    start_watcher,
)

LEASE_SECONDS = 6.0  # renewed every 2 s, fenced at 4 s, free for a standby at 6 s
ENV = {"CERTCHECK_LEASE_SECONDS": str(LEASE_SECONDS)}
LEASE_STREAM = f"KV_{LEASE_BUCKET}"
LEASE_SUBJECT = f"$KV.{LEASE_BUCKET}.watcher"
TLS = "kubernetes.io/tls"


@pytest.fixture
def watchers(stack: Stack, objects: ObjectsStream) -> Iterator[list[ServiceProcess]]:
    """The watchers a test starts: stopped afterwards, and the lease left free for the next test."""
    started: list[ServiceProcess] = []
    yield started
    for process in started:
        process.stop()
    put_lease(objects, LeaseRecord("", 0.0, LEASE_SECONDS))


def lease_record(objects: ObjectsStream) -> LeaseRecord:
    message = objects.run(objects.js.get_last_msg(LEASE_STREAM, LEASE_SUBJECT))
    return msgspec.json.decode(message.data or b"", type=LeaseRecord)


def put_lease(objects: ObjectsStream, record: LeaseRecord) -> None:
    async def put() -> None:
        kv = await objects.js.key_value(LEASE_BUCKET)
        await kv.put("watcher", msgspec.json.encode(record))

    objects.run(put())


def lease_stream_config(objects: ObjectsStream) -> StreamConfig:
    return objects.run(objects.js.stream_info(LEASE_STREAM)).config


def set_lease_stream_config(objects: ObjectsStream, config: StreamConfig) -> None:
    objects.run(objects.js.update_stream(config))


def wait_stepped_down(stack: Stack, instance: str, timeout: float) -> float:
    """The wall-clock time at which the watcher ``instance`` was seen to no longer act (its process
    goes on, standing by)."""
    wait_for(lambda: leader(stack, instance) == 0, timeout=timeout, what=f"{instance} to step down")
    return time.time()


def log_size(stack: Stack, instance: str) -> int:
    return (stack.workdir / "logs" / f"{instance}.log").stat().st_size


def log_since(stack: Stack, instance: str, offset: int) -> str:
    """What the instance logged since ``offset`` (its log is appended to across restarts and tests)."""
    with (stack.workdir / "logs" / f"{instance}.log").open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def test_a_watcher_whose_renewals_are_refused_steps_down_in_time_and_a_standby_takes_over_after(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str, watchers: list[ServiceProcess]
) -> None:
    active = start_watcher(stack, "fence-a", ENV)
    watchers.append(active)
    standby = start_watcher(stack, "fence-b", ENV, active=False)
    watchers.append(standby)
    assert leader(stack, "fence-b") == 0
    create_secret(cluster, ns, "before", TLS)
    objects.wait_published(ns, (SECRET, "before"))

    config = lease_stream_config(objects)
    mark = log_size(stack, "fence-a")
    # From now on the server answers every write to the lease bucket with 400 "message size exceeds
    # maximum allowed"; the objects stream, and every read, work as before.
    set_lease_stream_config(objects, dataclasses.replace(config, max_msg_size=8))
    try:
        exited_at = wait_stepped_down(stack, "fence-a", timeout=LEASE_SECONDS + 10)
        last = lease_record(objects)  # the last renewal that went through
        assert last.holder == "fence-a"
        assert exited_at < last.renewed_at + LEASE_SECONDS, (
            f"the watcher stopped {exited_at - last.renewed_at:.1f}s after its last renewal, "
            f"when a standby may take over after {LEASE_SECONDS}s"
        )
        assert active.running  # it stands by, in the same process
        assert "could not renew the watcher lease in time: stepping down" in log_since(stack, "fence-a", mark)

        create_secret(cluster, ns, "during", TLS)
        # The lease is free for the standby now, but it cannot take it either: nobody publishes.
        time.sleep(max(0.0, last.renewed_at + LEASE_SECONDS * 1.5 - time.time()))
        assert leader(stack, "fence-b") == 0
        assert objects.published(ns) == {(SECRET, "before")}
    finally:
        set_lease_stream_config(objects, config)

    # Once writes go through again, one of the two takes the lease (the one that stepped down may take
    # its own record back at once), and publishes what was created meanwhile.
    replicas = {"fence-a": active, "fence-b": standby}
    holder = wait_for(
        lambda: next((name for name in replicas if leader(stack, name) == 1), None),
        timeout=LEASE_SECONDS,
        what="a watcher taking over",
    )
    objects.wait_published(ns, (SECRET, "during"))

    # The other one stands by, and takes over at once when the active one stops cleanly.
    other = "fence-b" if holder == "fence-a" else "fence-a"
    assert leader(stack, other) == 0
    replicas[holder].stop()
    wait_for(lambda: leader(stack, other) == 1, timeout=5, what="the standby active at once")
    create_secret(cluster, ns, "after", TLS)
    objects.wait_published(ns, (SECRET, "after"))


def test_a_watcher_whose_lease_someone_else_took_stops_at_its_next_renewal_and_waits_for_it_to_expire(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str, watchers: list[ServiceProcess]
) -> None:
    active = start_watcher(stack, "fence-a", ENV)
    watchers.append(active)
    create_secret(cluster, ns, "before", TLS)
    objects.wait_published(ns, (SECRET, "before"))

    mark = log_size(stack, "fence-a")
    taken_at = time.time()
    put_lease(objects, LeaseRecord("intruder", taken_at, LEASE_SECONDS))
    exited_at = wait_stepped_down(stack, "fence-a", timeout=LEASE_SECONDS)
    assert exited_at - taken_at < LEASE_SECONDS / 3 + 1.5  # its next renewal found the lease gone
    assert active.running
    assert "another replica took the watcher lease" in log_since(stack, "fence-a", mark)

    create_secret(cluster, ns, "during", TLS)
    # While the intruder's lease is fresh, the watcher stands by and publishes nothing.
    time.sleep(max(0.0, taken_at + LEASE_SECONDS - 1 - time.time()))
    assert leader(stack, "fence-a") == 0
    assert objects.published(ns) == {(SECRET, "before")}

    wait_for(lambda: leader(stack, "fence-a") == 1, timeout=LEASE_SECONDS, what="taking the expired lease")
    objects.wait_published(ns, (SECRET, "during"))


def test_a_watcher_whose_renewals_get_no_answer_stops_before_a_standby_may_take_over(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str, watchers: list[ServiceProcess]
) -> None:
    active = start_watcher(stack, "fence-a", ENV)
    watchers.append(active)
    create_secret(cluster, ns, "before", TLS)
    objects.wait_published(ns, (SECRET, "before"))

    config = lease_stream_config(objects)
    # The lease bucket's stream stops capturing the lease's subject, and a subscriber that never answers
    # takes the writes instead: each renewal waits for an answer (a stream with no leader, say); the
    # objects stream works as before.
    set_lease_stream_config(objects, dataclasses.replace(config, subjects=["certcheck.parked-leases.>"]))
    black_hole = objects.run(objects.nc.subscribe(f"$KV.{LEASE_BUCKET}.>"))
    try:
        last = lease_record(objects)
        assert last.holder == "fence-a"
        # The moment a standby may take the lease over: by then the watcher must have stopped acting.
        time.sleep(max(0.0, last.renewed_at + LEASE_SECONDS + 0.2 - time.time()))
        running_then = leader(stack, "fence-a") == 1
        create_secret(cluster, ns, "late", TLS)
        time.sleep(2)
        published = objects.published(ns)
        stopped_after = wait_stepped_down(stack, "fence-a", timeout=15) - last.renewed_at
        assert not running_then and published == {(SECRET, "before")}, (
            f"{LEASE_SECONDS}s after its last renewal the watcher was "
            f"{'still acting' if running_then else 'standing by'}, it published {sorted(published)}, and it "
            f"stepped down {stopped_after:.1f}s after its last renewal"
        )
    finally:
        objects.run(black_hole.unsubscribe())
        set_lease_stream_config(objects, config)
