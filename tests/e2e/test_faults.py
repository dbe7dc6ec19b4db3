"""Fault injection: services and nats-server are SIGKILLed at random moments (and restarted, as a
Deployment would) while hundreds of Secrets are created and then replaced. Afterwards every annotation
and status entry is right, every due Event exists exactly once (count 1), and every due notification
arrived, each delivery id accepted once. The counts are printed.

It runs on one nats-server and on a 3-node JetStream cluster (every stream replicated three times), where
the bus victim is one node at a time: the cluster loses a node, and with it the leaders it held, while
the services keep working through the other two.

The small size runs in the suite; `pytest -m slow tests/e2e/test_faults.py` runs the large one by hand
(`CERTCHECK_FAULT_SEED` repeats a run's sequence of kills).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from devcluster.certs import make_cert, tls_secret_data
from devcluster.stack import Stack, api_client
from schemas import subjects
from services.notifier.core import DELIVERY_HEADER
from tests import subjects as test_subjects
from tests.conftest import LOOPBACK_WEBHOOKS, Cluster, running, wait_for
from tests.e2e.helpers import metric
from tests.receivers import Receiver

CERTCHECKS = 4
VICTIMS = ("watcher", "evaluator", "recorder", "notifier", "nats-server")


@dataclass
class Chaos:
    """Kills one random process every so often and brings it back, until stopped."""

    stack: Stack
    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        self._revive_all()

    def _run(self) -> None:
        rng = random.Random(self.seed)
        order: list[str] = []
        while not self._stop.wait(rng.uniform(0.3, 1.5)):
            if not order:  # every victim once per round, in a random order
                order = rng.sample(VICTIMS, len(VICTIMS))
            victim = order.pop()
            self.kills[victim] += 1
            if victim == "nats-server":
                node = rng.choice(self.stack.nats_cluster)
                node.kill()
                self._stop.wait(rng.uniform(0.1, 1.5))
                node.start()
            else:
                self.stack.services[victim].kill()
                self._stop.wait(rng.uniform(0.0, 1.0))
                self.stack.start_service(victim, self.stack.extra_env.get(victim, {}), wait=False)

    def _revive_all(self) -> None:
        for node in self.stack.nats_cluster:
            if not (node.proc and node.proc.poll() is None):
                node.start()
        for name in ("watcher", "evaluator", "recorder", "notifier", "exporter"):
            if not self.stack.services[name].running:
                self.stack.start_service(name, self.stack.extra_env.get(name, {}), wait=False)


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(1, id="one-nats-server"),
        pytest.param(3, id="three-node-nats-cluster"),
    ],
)
def fault_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    # Every Renewed Event is counted: none may be held back as a mass rotation's would be.
    services = {
        "notifier": {"CERTCHECK_NOTIFY_MAX_ATTEMPTS": "50", **LOOPBACK_WEBHOOKS},
        "recorder": {"CERTCHECK_EVENT_BURST": "0"},
    }
    with running(Stack(Path(tmp_path_factory.mktemp("faults")), nats_nodes=request.param), services) as stack:
        yield stack


def _cluster(stack: Stack) -> Cluster:
    api = api_client(stack.control_plane.kubeconfig)
    return Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api))


@dataclass
class _Firings:
    ids: Counter[str]  # accepted deliveries per delivery id
    per_secret: Counter[str]  # firing notices per Secret, each delivery id counted once

    def due_told(self, count: int) -> bool:
        return len(self.per_secret) >= count


def _firings(hook: Receiver, namespace: str) -> _Firings:
    told = _Firings(Counter(), Counter())
    for request in hook.accepted():
        if request.json()["namespace"] != namespace:
            continue
        delivery = request.headers[DELIVERY_HEADER]
        told.ids[delivery] += 1
        if told.ids[delivery] == 1:
            for certificate in request.json()["certificates"]:
                if certificate["change"] == "firing":
                    told.per_secret[certificate["secret"]] += 1
    return told


def _states(cluster: Cluster, namespace: str) -> dict[str, tuple[str | None, str | None]]:
    secrets = cluster.core.list_namespaced_secret(namespace, label_selector="fleet=chaos").items
    return {
        s.metadata.name: (
            (s.metadata.annotations or {}).get("certcheck.dev/state"),
            (s.metadata.annotations or {}).get("certcheck.dev/not-after"),
        )
        for s in secrets
    }


def _events(cluster: Cluster, namespace: str) -> list[Any]:
    return [
        e for e in cluster.core.list_namespaced_event(namespace).items if e.involved_object.kind == "Secret"
    ]


@dataclass
class _Progress:
    """Truthy once every Secret carries the wanted annotations; says which do not (for the failure)."""

    wrong: dict[str, tuple[str | None, str | None]]
    count: int

    def __bool__(self) -> bool:
        return not self.wrong and self.count > 0

    def __repr__(self) -> str:
        return f"{self.count} Secrets, {len(self.wrong)} wrong: {dict(list(self.wrong.items())[:5])}"


def _converged(cluster: Cluster, namespace: str, count: int, state: str, not_after: str) -> _Progress:
    states = _states(cluster, namespace)
    wrong = {name: value for name, value in states.items() if value != (state, not_after)}
    return _Progress(wrong, len(states) if len(states) == count else 0)


def _statuses_valid(cluster: Cluster, namespace: str, count: int) -> bool:
    per_check = count // CERTCHECKS
    for index in range(CERTCHECKS):
        status = cluster.status(namespace, f"c{index}")
        counts = (status.get("targetCertsCount"), status.get("expiringSoonCount"), status.get("validCount"))
        if counts != (per_check, 0, per_check):
            return False
    return True


def _status_diagnosis(stack: Stack, cluster: Cluster, namespace: str, count: int) -> str:
    """Each CertCheck whose status is wrong: what it shows, what its last result says, the recorder's
    mark, and the recorder's status writes by outcome."""
    import asyncio

    import nats

    from schemas.messages import EvaluationResult, result_decoder

    per_check = count // CERTCHECKS
    wrong = []
    for index in range(CERTCHECKS):
        status = cluster.status(namespace, f"c{index}")
        counts = (status.get("targetCertsCount"), status.get("expiringSoonCount"), status.get("validCount"))
        if counts != (per_check, 0, per_check):
            wrong.append((f"c{index}", counts, status.get("lastEvaluationTime")))

    async def bus() -> str:
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        out = []
        for name, counts, at in wrong:
            line = f"{name} status {counts} at {at}"
            try:
                msg = await js.get_last_msg("CERTCHECK_RESULTS", f"certcheck.v1.results.{namespace}.{name}")
                result = result_decoder.decode(msg.data)
                if isinstance(result, EvaluationResult):
                    shown = (
                        result.status.target_certs_count,
                        result.status.expiring_soon_count,
                        result.status.valid_count,
                    )
                    line += (
                        f"; result seq {msg.seq} view {result.view_seq} status {shown} "
                        f"changed {result.status_changed} at {result.evaluated_at} "
                        f"rv {result.resource_version}"
                    )
            except Exception as exc:
                line += f"; result: {exc!r}"
            try:
                kv = await js.key_value("certcheck_recorder_applied")
                entry = await kv.get(f"results.{namespace}.{name}")
                line += f"; applied mark {entry.value!r}"
            except Exception as exc:
                line += f"; applied: {exc!r}"
            out.append(line)
        info = await js.consumer_info("CERTCHECK_RESULTS", "recorder")
        pending = f"pending {info.num_pending} ack {info.num_ack_pending}"
        out.append(f"recorder {pending} redelivered {info.num_redelivered}")
        await nc.close()
        for outcome in ("ok", "gone", "error"):  # since the recorder last started
            count = metric(
                stack, "recorder", "certcheck_kubernetes_writes_total", f'kind="status",outcome="{outcome}"'
            )
            out.append(f"status writes {outcome}: {count:.0f}")
        put_back = metric(stack, "evaluator", "certcheck_evaluator_statuses_put_back_total")
        out.append(f"statuses put back: {put_back:.0f}")
        return "\n".join(out)

    return asyncio.run(bus())


def _where_is(stack: Stack, cluster: Cluster, namespace: str, progress: _Progress) -> str:
    """Where the first Secret that did not converge got stuck: the objects stream, the results."""
    import asyncio

    import nats

    from schemas.messages import object_decoder, result_decoder

    name = sorted(progress.wrong)[0]
    secret = cluster.core.read_namespaced_secret(name, namespace)

    async def bus() -> str:
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        out = [f"{name} rv {secret.metadata.resource_version}"]
        try:
            msg = await js.get_last_msg(
                "CERTCHECK_OBJECTS", test_subjects.object_subject(subjects.KIND_SECRET, namespace, name)
            )
            observed = object_decoder.decode(msg.data)
            out.append(f"objects seq {msg.seq} rv {observed.resource_version} headers {msg.headers}")  # type: ignore[union-attr]
        except Exception as exc:
            out.append(f"objects: {exc!r}")
        part = int(name[1:]) % CERTCHECKS
        try:
            msg = await js.get_last_msg("CERTCHECK_RESULTS", f"certcheck.v1.results.{namespace}.c{part}")
            result = result_decoder.decode(msg.data)
            patches = result.annotation_patches  # type: ignore[union-attr]
            mine = [(p.resource_version, p.annotations) for p in patches if p.name == name]
            out.append(f"result seq {msg.seq} view {result.view_seq} patches {len(patches)}, {name}'s {mine}")  # type: ignore[union-attr]
        except Exception as exc:
            out.append(f"result: {exc!r}")
        for consumer, stream in (("recorder", "CERTCHECK_RESULTS"),):
            info = await js.consumer_info(stream, consumer)
            out.append(
                f"{consumer} pending {info.num_pending} ack {info.num_ack_pending} "
                f"redelivered {info.num_redelivered}"
            )
        await nc.close()
        return "; ".join(out)

    running = {name: process.running for name, process in stack.services.items()}
    tails = {
        name: [line[:300] for line in process.log_path.read_text(errors="replace").splitlines()[-6:]]
        for name, process in stack.services.items()
        if name in ("recorder", "evaluator")
    }
    return f"{asyncio.run(bus())}; running {running}; logs {tails}"


def _diagnose(stack: Stack, cluster: Cluster, namespace: str, count: int) -> str:
    """What is missing, and what the bus holds, when Events do not add up."""
    import asyncio

    import nats

    have = {(e.involved_object.name, e.reason) for e in _events(cluster, namespace)}
    missing = [
        (f"s{i:04d}", reason)
        for i in range(count)
        for reason in ("ExpiringSoon", "Renewed")
        if (f"s{i:04d}", reason) not in have
    ]

    async def bus() -> str:
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        info = await js.stream_info("CERTCHECK_KUBE_EVENTS")
        consumer = await js.consumer_info("CERTCHECK_KUBE_EVENTS", "recorder-events")
        await nc.close()
        pending = f"pending {consumer.num_pending} ack {consumer.num_ack_pending}"
        return f"events stream {info.state.messages} msgs; consumer {pending}"

    return f"missing {len(missing)}: {missing[:8]}; {asyncio.run(bus())}"


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "count", [pytest.param(240, id="240"), pytest.param(2000, id="2000", marks=pytest.mark.slow)]
)
def test_nothing_is_lost_or_doubled_when_processes_and_the_bus_die_at_random(
    fault_stack: Stack, hook: Receiver, count: int
) -> None:
    stack = fault_stack
    cluster = _cluster(stack)
    namespace = f"chaos-{count}-{len(stack.nats_cluster)}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    now = datetime.now(UTC).replace(microsecond=0)
    soon_at, later_at = now + timedelta(days=5), now + timedelta(days=300)
    soon, soon_key = make_cert("chaos.test", soon_at)
    later, later_key = make_cert("chaos.test", later_at)
    soon_text = soon_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    later_text = later_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    for index in range(CERTCHECKS):
        notification = (
            {"targets": [{"name": "hook", "webhook": {"url": f"{hook.url}/c{index}"}}]}
            if index % 2 == 0
            else None
        )
        cluster.create_certcheck(
            namespace, f"c{index}", {"matchLabels": {"part": str(index)}}, notification=notification
        )

    def create(index: int) -> None:
        labels = {"fleet": "chaos", "part": str(index % CERTCHECKS)}
        cluster.create_tls_secret(namespace, f"s{index:04d}", soon, soon_key, labels=labels)

    def renew(index: int) -> None:
        data = tls_secret_data(later, later_key)
        cluster.core.patch_namespaced_secret(f"s{index:04d}", namespace, {"data": data})

    chaos = Chaos(stack, seed=int(os.environ.get("CERTCHECK_FAULT_SEED", str(int(time.time())))))
    print(f"\nfault injection: {count} Secrets, {CERTCHECKS} CertChecks, seed {chaos.seed}")
    started = time.monotonic()
    chaos.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(count)))
        time.sleep(8)  # start-up under fire
    finally:
        chaos.stop()
    wait_for(
        lambda: _converged(cluster, namespace, count, "ExpiringSoon", soon_text),
        timeout=180,
        what="all ExpiringSoon",
    )
    # Notifications tell the state the notifier finds (as Alertmanager does): an expiry renewed while
    # the notifier was down is not told, so each firing is due once phase one has converged.
    wait_for(
        lambda: _firings(hook, namespace).due_told(count // 2), timeout=120, what="every firing notification"
    )
    phase_one = time.monotonic() - started

    chaos = Chaos(stack, seed=chaos.seed + 1, kills=chaos.kills)
    chaos.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            for batch in range(0, count, 10):  # replacements at a steady rate, not all at once
                list(pool.map(renew, range(batch, min(count, batch + 10))))
                time.sleep(0.4)
        time.sleep(3)
    finally:
        chaos.stop()
    try:
        wait_for(
            lambda: _converged(cluster, namespace, count, "Valid", later_text),
            timeout=180,
            what="all renewed",
        )
    except AssertionError:
        print(
            _where_is(stack, cluster, namespace, _converged(cluster, namespace, count, "Valid", later_text))
        )
        raise
    try:
        wait_for(lambda: _statuses_valid(cluster, namespace, count), timeout=60, what="every status")
    except AssertionError:
        print(_status_diagnosis(stack, cluster, namespace, count))
        raise

    def events_complete() -> list[Any] | None:
        events = _events(cluster, namespace)
        return events if len(events) >= 2 * count else None

    try:
        events = wait_for(events_complete, timeout=120, what="two Events per Secret")
    except AssertionError:
        print(_diagnose(stack, cluster, namespace, count))
        raise
    by_reason = Counter(e.reason for e in events)
    counts = Counter(e.count for e in events)
    per_secret = Counter((e.involved_object.name, e.reason) for e in events)
    told = _firings(hook, namespace)
    print(
        f"kills {dict(chaos.kills)}; phase one {phase_one:.0f}s; "
        f"events {dict(by_reason)} counts {dict(counts)}; "
        f"notifications: {sum(told.ids.values())} accepted, {len(told.ids)} delivery ids, "
        f"{sum(1 for n in told.ids.values() if n > 1)} ids seen twice; "
        f"notices per Secret {dict(Counter(told.per_secret.values()))}"
    )
    assert sum(chaos.kills.values()) >= 5
    assert by_reason == {"ExpiringSoon": count, "Renewed": count}
    assert set(per_secret.values()) == {1} and counts == {1: 2 * count}
    assert len(told.per_secret) == count // 2
    assert set(told.per_secret.values()) == {1}  # each certificate's firing told once
