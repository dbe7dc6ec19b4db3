"""Evaluators and exporters scaled out by partition, on a control plane and nats-server of their own:
three evaluator replicas share the partitions; one SIGKILLed, its partitions are taken over within the
lease time and no change is lost; a fourth joining takes a share; every certificate's series is
exported by exactly one exporter replica."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import Stack, api_client
from schemas import subjects
from schemas.streams import DEFAULT_PARTITIONS
from tests.conftest import Cluster, running, wait_for
from tests.e2e.helpers import metric

LEASE_SECONDS = 3.0
EVALUATORS = ("evaluator-a", "evaluator-b", "evaluator-c")
EXPORTERS = ("exporter-a", "exporter-b")
SHORT_LEASE = {"CERTCHECK_LEASE_SECONDS": str(LEASE_SECONDS)}


def _namespace_per_partition() -> dict[int, str]:
    """One namespace name in each partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < DEFAULT_PARTITIONS:
        name = f"part-{i}"
        found.setdefault(subjects.partition_of(name, DEFAULT_PARTITIONS), name)
        i += 1
    return found


NAMESPACES = _namespace_per_partition()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running(Stack(Path(tmp_path_factory.mktemp("partitions")))) as stack:
        for service in ("watcher", "recorder"):
            stack.start_service(service)
        for instance in EVALUATORS:
            stack.start_service("evaluator", SHORT_LEASE, wait=False, instance=instance)
        for instance in EXPORTERS:
            stack.start_service("exporter", SHORT_LEASE, wait=False, instance=instance)
        yield stack


@pytest.fixture(scope="module")
def fleet_cluster(fleet: Stack) -> Cluster:
    api = api_client(fleet.control_plane.kubeconfig)
    cluster = Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api))
    for namespace in NAMESPACES.values():
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    return cluster


def owned(stack: Stack, instance: str, group: str = "evaluator") -> int:
    """How many partitions the replica holds, by its metrics (0 while it is not serving them yet)."""
    try:
        return int(metric(stack, instance, "certcheck_partitions_owned", f'group="{group}"'))
    except OSError:
        return 0


def shares(stack: Stack, instances: tuple[str, ...], group: str = "evaluator") -> dict[str, int] | None:
    """Each replica's count of partitions, once they add up to all of them (None before)."""
    counts = {instance: owned(stack, instance, group) for instance in instances}
    return counts if sum(counts.values()) == DEFAULT_PARTITIONS else None


def states(cluster: Cluster) -> dict[str, str]:
    return {ns: cluster.annotations(ns, "web").get("certcheck.dev/state", "") for ns in NAMESPACES.values()}


def renew_all(cluster: Cluster, days: int) -> None:
    for namespace in NAMESPACES.values():
        cert, key = expiring_in(days, f"{namespace}.test")
        cluster.core.patch_namespaced_secret("web", namespace, {"data": tls_secret_data(cert, key)})


def test_three_evaluators_share_the_partitions_and_evaluate_every_namespace(
    fleet: Stack, fleet_cluster: Cluster
) -> None:
    counts = wait_for(lambda: shares(fleet, EVALUATORS), timeout=30, what="every partition held")
    assert sorted(counts.values()) == [5, 5, 6]  # balanced: 16 over 3
    for namespace in NAMESPACES.values():
        cert, key = expiring_in(10, f"{namespace}.test")
        fleet_cluster.create_tls_secret(namespace, "web", cert, key, labels={"app": "web"})
        fleet_cluster.create_certcheck(namespace, "web", {"matchLabels": {"app": "web"}})
    wait_for(
        lambda: set(states(fleet_cluster).values()) == {"ExpiringSoon"},
        timeout=60,
        what="every namespace's certificate annotated ExpiringSoon",
    )

    def held() -> dict[str, int] | None:
        """Secrets in each replica's views, once they match its partitions (one namespace each)."""
        secrets = {i: int(metric(fleet, i, "certcheck_view_objects", 'kind="secret"')) for i in EVALUATORS}
        return secrets if secrets == counts else None

    wait_for(held, timeout=15, what="each replica holding the objects of its partitions only")


def test_every_certificate_is_exported_by_exactly_one_exporter(fleet: Stack, fleet_cluster: Cluster) -> None:
    wait_for(lambda: shares(fleet, EXPORTERS, "exporter"), timeout=30, what="every partition exported")

    def exported() -> dict[str, list[str]] | None:
        by_namespace: dict[str, list[str]] = {}
        for namespace in NAMESPACES.values():
            label = f'secret_namespace="{namespace}"'
            by_namespace[namespace] = [
                e for e in EXPORTERS if metric(fleet, e, "certcheck_certificate_expiring", label) == 1
            ]
        return by_namespace if all(len(found) == 1 for found in by_namespace.values()) else None

    wait_for(exported, timeout=30, what="each certificate's series on exactly one exporter")


def test_a_killed_evaluators_partitions_are_taken_over_within_the_lease_and_no_change_is_lost(
    fleet: Stack, fleet_cluster: Cluster
) -> None:
    wait_for(lambda: set(states(fleet_cluster).values()) == {"ExpiringSoon"}, timeout=60, what="start state")
    killed = EVALUATORS[0]
    fleet.services[killed].kill()
    renew_all(fleet_cluster, 200)  # changes in every partition, the killed replica's among them
    started = time.monotonic()
    survivors = EVALUATORS[1:]
    counts = wait_for(lambda: shares(fleet, survivors), timeout=LEASE_SECONDS * 3 + 10, what="takeover")
    taken_over_in = time.monotonic() - started
    assert sorted(counts.values()) == [8, 8]
    assert taken_over_in < LEASE_SECONDS * 2 + 5  # the lease runs out, the next round claims
    wait_for(
        lambda: set(states(fleet_cluster).values()) == {"Valid"},
        timeout=60,
        what="every renewal seen, the killed replica's partitions' too",
    )
    for namespace in NAMESPACES.values():
        status = fleet_cluster.status(namespace, "web")
        assert status.get("validCount") == 1, namespace
        warnings = [e for e in fleet_cluster.events(namespace, "Secret", "web") if e.type == "Warning"]
        assert len(warnings) == 1, (namespace, warnings)  # never doubled by two holders


def test_a_fourth_evaluator_joining_takes_a_share_and_evaluates_it(
    fleet: Stack, fleet_cluster: Cluster
) -> None:
    live = (*EVALUATORS[1:], "evaluator-d")
    fleet.start_service("evaluator", SHORT_LEASE, wait=False, instance="evaluator-d")

    def balanced() -> dict[str, int] | None:
        # While partitions move, every one is held by someone but the shares are not balanced yet.
        counts = shares(fleet, live)
        return counts if counts and sorted(counts.values()) == [5, 5, 6] else None

    counts = wait_for(balanced, timeout=30, what="a fair share for the new one")
    assert counts["evaluator-d"] in (5, 6)
    renew_all(fleet_cluster, 10)
    wait_for(
        lambda: set(states(fleet_cluster).values()) == {"ExpiringSoon"},
        timeout=60,
        what="every namespace evaluated by its new holder",
    )
