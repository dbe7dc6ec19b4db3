"""Nothing is lost when a process or the bus restarts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from devcluster.stack import Stack
from tests.conftest import Cluster, wait_for


def state_of(cluster: Cluster, namespace: str, secret: str) -> str | None:
    return cluster.annotations(namespace, secret).get("certcheck.dev/state")


def test_state_flips_after_the_evaluator_was_killed_while_a_schedule_was_pending(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    crossing = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    cert, key = make_cert("k.test", not_after=crossing + timedelta(days=1))
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "k"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "k"}}, threshold=1)
    wait_for(lambda: state_of(cluster, namespace, "s") == "Valid", what="Valid first")

    stack.services["evaluator"].kill()
    time.sleep(max(0.0, (crossing - datetime.now(UTC)).total_seconds()) + 1)
    assert state_of(cluster, namespace, "s") == "Valid"  # nobody evaluated while it was down
    stack.start_service("evaluator")
    wait_for(
        lambda: state_of(cluster, namespace, "s") == "ExpiringSoon", timeout=20, what="flip after restart"
    )


def test_schedule_survives_a_nats_server_crash(cluster: Cluster, namespace: str, stack: Stack) -> None:
    crossing = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=12)
    cert, key = make_cert("n.test", not_after=crossing + timedelta(days=1))
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "n"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "n"}}, threshold=1)
    wait_for(lambda: state_of(cluster, namespace, "s") == "Valid", what="Valid first")

    stack.nats.kill()
    time.sleep(1)
    stack.nats.start()
    # No service restarted: only the schedule, kept in the stream across the crash, can flip the state.
    wait_for(lambda: state_of(cluster, namespace, "s") == "ExpiringSoon", timeout=30, what="flip when due")
    assert datetime.now(UTC) - crossing < timedelta(seconds=5)
    assert all(process.running for process in stack.services.values())

    # The services are connected again: a fresh change still flows end to end.
    renewed, renewed_key = expiring_in(300)
    cluster.core.patch_namespaced_secret("s", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(lambda: state_of(cluster, namespace, "s") == "Valid", timeout=20, what="change after the crash")


def test_watcher_restart_notices_changes_and_deletions_made_while_it_was_down(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(100)
    for name in ("changed", "deleted", "kept"):
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "w"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "w"}})
    wait_for(lambda: cluster.status(namespace, "c").get("targetCertsCount") == 3, what="three listed")

    stack.services["watcher"].kill()
    soon, soon_key = expiring_in(4)
    cluster.core.patch_namespaced_secret("changed", namespace, {"data": tls_secret_data(soon, soon_key)})
    cluster.core.delete_namespaced_secret("deleted", namespace)
    stack.start_service("watcher")

    status = wait_for(
        lambda: (
            (s := cluster.status(namespace, "c")).get("targetCertsCount") == 2
            and s.get("expiringSoonCount") == 1
            and s
        ),
        timeout=20,
        what="the change and the deletion",
    )
    assert sorted(c["name"] for c in status["certificates"]) == ["changed", "kept"]
