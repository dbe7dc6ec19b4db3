"""Nothing is lost when a process or the bus restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from kubernetes import client

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from devcluster.stack import SERVICES, Stack, api_client
from schemas import subjects
from schemas.messages import due_decoder
from schemas.streams import TRIGGERS, WATCHER_STATE_BUCKET
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION
from services.domain.times import parse_rfc3339
from tests import subjects as test_subjects
from tests.conftest import Cluster, last_message, published_version, running, wait_for, watcher_progress
from tests.e2e.helpers import metric, state_of

TLS_SCOPE = f"{subjects.KIND_SECRET}.kubernetes.io/tls"  # the watch of kubernetes.io/tls Secrets


def fired_due(stack: Stack, namespace: str, name: str) -> datetime | None:
    """The due time of the message the CertCheck's schedule fired last (None: it never fired)."""
    msg = last_message(stack, TRIGGERS.name, test_subjects.due_subject(namespace, name))
    return parse_rfc3339(due_decoder.decode(msg.data).due_at) if msg else None


def test_state_flips_after_the_evaluator_was_killed_while_a_schedule_was_pending(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    crossing = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    cert, key = make_cert("k.test", not_after=crossing + timedelta(days=1))
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "k"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "k"}}, threshold=1)
    wait_for(lambda: state_of(cluster, namespace, "s") == "Valid", what="Valid first")

    stack.services["evaluator"].kill()
    # The schedule fires at the crossing, into a consumer nobody reads now.
    wait_for(
        lambda: fired_due(stack, namespace, "c") == crossing,
        timeout=(crossing - datetime.now(UTC)).total_seconds() + 15,
        what="the schedule to fire while the evaluator is down",
    )
    assert state_of(cluster, namespace, "s") == "Valid"  # nobody evaluated while it was down
    stack.start_service("evaluator")
    wait_for(
        lambda: state_of(cluster, namespace, "s") == "ExpiringSoon", timeout=20, what="flip after restart"
    )


def test_a_schedule_due_while_nats_server_was_down_fires_when_it_is_back(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    crossing = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    cert, key = make_cert("n.test", not_after=crossing + timedelta(days=1))
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "n"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "n"}}, threshold=1)
    wait_for(lambda: state_of(cluster, namespace, "s") == "Valid", what="Valid first")

    stack.nats.kill()
    # Down until the schedule is overdue: its time passes while no server can fire it (a wait for the
    # clock itself; nothing else can happen meanwhile).
    wait_for(lambda: datetime.now(UTC) > crossing, timeout=10, what="the due time to pass")
    assert state_of(cluster, namespace, "s") == "Valid"
    stack.nats.start()
    back = datetime.now(UTC)
    # No service restarted: only the schedule, kept in the stream across the crash, can flip the state.
    wait_for(lambda: state_of(cluster, namespace, "s") == "ExpiringSoon", timeout=30, what="flip when back")
    assert datetime.now(UTC) - back < timedelta(seconds=10)
    assert all(stack.services[name].running for name in SERVICES)

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


def test_watcher_resumes_from_its_resource_version_after_a_restart(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    from tests.e2e.helpers import metric

    cert, key = expiring_in(100)
    created = [
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "r"}) for name in ("a", "b")
    ]
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "r"}})
    wait_for(lambda: cluster.status(namespace, "c").get("targetCertsCount") == 2, what="two listed")
    newest = max(int(secret.metadata.resource_version) for secret in created)
    wait_for(
        lambda: watcher_progress(stack).get(TLS_SCOPE, 0) >= newest,
        what="the watcher's progress saved past both Secrets",
    )

    # A quick restart resumes the watch where it stopped: no LIST.
    stack.restart_service("watcher", kill=False)
    cluster.core.delete_namespaced_secret("a", namespace)
    wait_for(lambda: cluster.status(namespace, "c").get("targetCertsCount") == 1, what="a's deletion")
    tombstone = published_version(stack, subjects.KIND_SECRET, namespace, "a")
    assert tombstone is not None and tombstone.isdigit(), f"a's deletion not seen by the watch: {tombstone}"
    # The resumed watch carries on past the deletion (and saves that it did), still without a LIST.
    wait_for(
        lambda: watcher_progress(stack).get(TLS_SCOPE, 0) >= int(tombstone),
        what="the watcher's progress saved past the deletion",
    )
    lists = metric(stack, "watcher", "certcheck_watch_restarts_total", 'cause="list"')
    # Namespaces and ClusterCertChecks are always listed in full (they are few: shares are made of both).
    always = sum(
        metric(stack, "watcher", "certcheck_watch_restarts_total", f'cause="list",resource="{resource}"')
        for resource in ("namespaces", "clustercertchecks")
    )
    assert always == 2 and lists - always == 0


@pytest.fixture(scope="module")
def uncached_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second control plane whose watches go straight to etcd (no watch cache), so that an etcd
    compaction makes old resourceVersions answer 410 Gone at once, as they do in production over time."""
    uncached = Stack(Path(tmp_path_factory.mktemp("uncached")), apiserver_args=["--watch-cache=false"])
    with running(uncached, {}) as stack:
        yield stack


def test_watcher_relists_on_410_gone_and_notices_deletions_made_while_it_was_down(
    uncached_stack: Stack,
) -> None:
    from tests.conftest import Cluster as ClusterHelper
    from tests.e2e.helpers import metric

    stack = uncached_stack
    api = api_client(stack.control_plane.kubeconfig)
    cluster = ClusterHelper(client.CoreV1Api(api), client.CustomObjectsApi(api))
    namespace = "gone"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    cert, key = expiring_in(100)
    created = [
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "g"}) for name in ("a", "b")
    ]
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "g"}})
    wait_for(lambda: cluster.status(namespace, "c").get("targetCertsCount") == 2, what="two listed")
    newest = max(int(secret.metadata.resource_version) for secret in created)
    wait_for(
        lambda: watcher_progress(stack).get(TLS_SCOPE, 0) >= newest,
        what="the watcher's progress saved past both Secrets",
    )

    stack.services["watcher"].stop()
    cluster.core.delete_namespaced_secret("b", namespace)
    stack.control_plane.compact_etcd()  # the saved resourceVersion is history now
    stack.start_service("watcher")

    wait_for(
        lambda: cluster.status(namespace, "c").get("targetCertsCount") == 1, timeout=20, what="b's deletion"
    )
    tls = 'resource="secrets/kubernetes.io/tls"'
    assert metric(stack, "watcher", "certcheck_watch_restarts_total", f'{tls},cause="gone"') == 1
    assert metric(stack, "watcher", "certcheck_watch_restarts_total", f'{tls},cause="list"') == 1


def forget_watch_progress(stack: Stack) -> None:
    """Remove the watcher's saved resourceVersions: its next start must LIST everything."""

    async def forget() -> None:
        nc = await nats.connect(stack.nats.url)
        kv = await nc.jetstream().key_value(WATCHER_STATE_BUCKET)
        for key in await kv.keys():
            await kv.purge(key)
        await nc.close()

    asyncio.run(forget())


def test_every_deletion_a_relist_finds_is_applied_everywhere(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(100)
    for index in range(60):
        cluster.create_tls_secret(
            namespace, f"s{index}", cert, key, labels={"app": "t", "half": str(index % 2)}
        )
    cluster.create_certcheck(namespace, "keep", {"matchLabels": {"app": "t"}})
    cluster.create_certcheck(namespace, "gone-0", {"matchLabels": {"half": "0"}})
    cluster.create_certcheck(namespace, "gone-1", {"matchLabels": {"half": "1"}})
    for name in ("keep", "gone-0", "gone-1"):
        wait_for(lambda name=name: cluster.status(namespace, name).get("lastEvaluationTime"), what=name)
    wait_for(lambda: cluster.status(namespace, "keep").get("targetSecretsCount") == 60, what="sixty listed")
    series = f'certcheck_namespace="{namespace}"'
    wait_for(lambda: metric(stack, "exporter", "certcheck_certcheck_targets", series) == 120, what="exported")

    stack.services["watcher"].stop()
    forget_watch_progress(stack)
    for index in range(50):
        cluster.core.delete_namespaced_secret(f"s{index}", namespace)
    for name in ("gone-0", "gone-1"):
        cluster.custom.delete_namespaced_custom_object(
            CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL, name
        )
    stack.start_service("watcher")

    status = wait_for(
        lambda: (s := cluster.status(namespace, "keep")).get("targetSecretsCount") == 10 and s,
        timeout=30,
        what="fifty deletions found by the LIST",
    )
    assert sorted(c["name"] for c in status["certificates"]) == sorted(f"s{i}" for i in range(50, 60))
    wait_for(
        lambda: metric(stack, "exporter", "certcheck_certcheck_targets", series) == 10,
        what="the deleted CertChecks' series gone",
    )
    assert metric(stack, "exporter", "certcheck_certcheck_targets", f'{series},certcheck="gone-0"') == 0
    assert metric(stack, "watcher", "certcheck_watcher_published_total", 'change="delete"') >= 52


def test_a_relist_of_one_secret_type_never_deletes_secrets_of_another(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    tls, tls_key = expiring_in(100)
    cluster.create_tls_secret(namespace, "tls", tls, tls_key, labels={"app": "types"})
    opaque, _ = expiring_in(100, "opaque.test")
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="opaque", labels={"app": "types"}),
            type="Opaque",
            string_data={"cert.pem": opaque.decode()},
        ),
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "types"}})
    wait_for(lambda: cluster.status(namespace, "c").get("targetSecretsCount") == 2, what="both types")

    stack.services["watcher"].stop()
    forget_watch_progress(stack)  # the restarted watcher must LIST every Secret type again
    stack.start_service("watcher")
    wait_for(
        lambda: (
            metric(stack, "watcher", "certcheck_watch_restarts_total", 'cause="list",resource="secrets/') >= 2
        ),
        what="a LIST per Secret type",
    )
    assert metric(stack, "watcher", "certcheck_watcher_published_total", 'change="delete"') == 0
    assert cluster.status(namespace, "c")["targetSecretsCount"] == 2


def test_a_standby_watcher_takes_over_when_the_active_one_dies(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    standby = stack.start_service("watcher", stack.extra_env.get("watcher", {}), instance="watcher-2")
    try:
        assert metric(stack, "watcher-2", "certcheck_leader", 'lease="watcher"', present=True) == 0
        stack.services["watcher"].kill()
        # The lease (15 s) expires, the standby takes it, resumes from the saved progress and watches.
        wait_for(
            lambda: metric(stack, "watcher-2", "certcheck_leader", 'lease="watcher"') == 1,
            timeout=30,
            what="the standby holding the lease",
        )
        cert, key = expiring_in(10)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "ha"})
        cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "ha"}})
        wait_for(lambda: state_of(cluster, namespace, "s") == "ExpiringSoon", what="recorded via the standby")
    finally:
        standby.stop()  # releases the lease: the original watcher takes it at once
        stack.start_service("watcher", stack.extra_env.get("watcher", {}))
    wait_for(
        lambda: metric(stack, "watcher", "certcheck_leader", 'lease="watcher"') == 1,
        what="the original watcher active again",
    )
