"""``certcheck all``: every service in one process, on a control plane and nats-server of its own, as
the `all` NATS user and a Kubernetes identity holding only k8s/overlays/small's bindings. The same path
as the split services: annotations, status, Events, metrics, a change, and a clean stop."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import ALL_IN_ONE, Stack, api_client
from tests.conftest import Cluster, running, wait_for
from tests.e2e.helpers import metric

NAMESPACE = "small"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # At debug level: every stage logs one line per object it handles (the life of one change).
    debug = {"watcher": {"CERTCHECK_LOG_LEVEL": "debug"}}
    with running(Stack(Path(tmp_path_factory.mktemp("all-in-one")), all_in_one=True), debug) as stack:
        yield stack


@pytest.fixture(scope="module")
def small_cluster(small: Stack) -> Cluster:
    api = api_client(small.control_plane.kubeconfig)
    cluster = Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api))
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    return cluster


def test_one_process_runs_every_service(small: Stack) -> None:
    assert list(small.services) == [ALL_IN_ONE]
    url = f"http://127.0.0.1:{small.http_ports[ALL_IN_ONE]}/readyz"
    with urllib.request.urlopen(url, timeout=5) as ready:
        assert ready.status == 200


def test_a_certificate_is_annotated_reported_and_exported_and_its_renewal_followed(
    small: Stack, small_cluster: Cluster
) -> None:
    cluster = small_cluster
    cert, key = expiring_in(10, "small.test")
    cluster.create_tls_secret(NAMESPACE, "web", cert, key, labels={"app": "web"})
    cluster.create_certcheck(NAMESPACE, "web", {"matchLabels": {"app": "web"}})
    wait_for(
        lambda: cluster.annotations(NAMESPACE, "web").get("certcheck.dev/state") == "ExpiringSoon",
        what="ExpiringSoon annotation",
    )
    wait_for(lambda: cluster.status(NAMESPACE, "web").get("expiringSoonCount") == 1, what="status")
    events = wait_for(lambda: cluster.events(NAMESPACE, "Secret", "web"), what="Warning Event")
    assert [(e.type, e.reason) for e in events] == [("Warning", "ExpiringSoon")]
    expiring = 'secret_namespace="small",'
    wait_for(
        lambda: metric(small, ALL_IN_ONE, "certcheck_certificate_expiring", expiring) == 1,
        what="the exporter's series on the same port",
    )

    renewed, renewed_key = expiring_in(200, "small.test")
    cluster.core.patch_namespaced_secret("web", NAMESPACE, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(
        lambda: cluster.annotations(NAMESPACE, "web").get("certcheck.dev/state") == "Valid",
        what="Valid after the renewal",
    )
    wait_for(lambda: cluster.status(NAMESPACE, "web").get("validCount") == 1, what="status renewed")
    wait_for(
        lambda: metric(small, ALL_IN_ONE, "certcheck_certificate_expiring", expiring, present=True) == 0,
        what="the series renewed",
    )


def test_at_debug_level_every_stage_logs_a_line_keyed_by_the_objects_namespace_name_and_version(
    small: Stack, small_cluster: Cluster
) -> None:
    cert, key = expiring_in(90, "traced.test")
    created = small_cluster.create_tls_secret(NAMESPACE, "traced", cert, key, labels={"app": "traced"})
    small_cluster.create_certcheck(NAMESPACE, "tracer", {"matchLabels": {"app": "traced"}})
    wait_for(
        lambda: small_cluster.annotations(NAMESPACE, "traced").get("certcheck.dev/state") == "Valid",
        what="the traced Secret annotated",
    )
    ref = f"{NAMESPACE}/traced@{created.metadata.resource_version}"
    log = small.workdir / "logs" / f"{ALL_IN_ONE}.log"

    def stages() -> set[str]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if ref in line]
        return {line["stage"] for line in lines if line.get("object") == ref}

    # The recorder's line may follow the annotation by a moment (it logs after the write returned).
    wait_for(lambda: stages() >= {"watcher", "view", "evaluator", "recorder"}, what=f"every stage of {ref}")


def test_the_process_exits_0_within_5_seconds_of_sigterm(small: Stack) -> None:
    process = small.services[ALL_IN_ONE]
    assert process.proc is not None and process.running
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    code = process.proc.wait(15)
    elapsed = time.monotonic() - started
    small.start_service(ALL_IN_ONE)
    assert code == 0
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"
