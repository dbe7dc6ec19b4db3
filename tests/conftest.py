"""Shared fixtures. End-to-end tests share one real control plane, nats-server and set of services per
session; each test works in a namespace of its own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from kubernetes import client
from nats.js.errors import NoKeysError, NotFoundError

from devcluster.cluster import NatsServer
from devcluster.stack import Stack, api_client, apply_crd
from schemas import subjects
from schemas.streams import (
    DEFAULT_PARTITIONS,
    HDR_RESOURCE_VERSION,
    KUBE_EVENTS,
    NOTIFIER_CONSUMER,
    OBJECTS,
    RECORDER_CONSUMER,
    RECORDER_EVENTS_CONSUMER,
    RESULTS,
    TRIGGERS,
    WATCHER_STATE_BUCKET,
    evaluator_due_consumer,
)
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION
from tests import subjects as test_subjects
from tests.receivers import Receiver, Reply, slack_ok

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


class BusTap:
    """Records every message on the bus (core NATS sees JetStream traffic too), from a thread.

    Only while a test needs it: a subscriber to ``>`` is interest in every inbox, so the server keeps
    delivering to the pull requests of a service that has just stopped (until they expire), and those
    messages then wait for their ack wait before they are delivered again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[tuple[str, bytes, dict[str, str]]] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bus-tap")

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(5)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("bus tap did not connect")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._tap())

    async def _tap(self) -> None:
        async def quiet(_: Exception) -> None:
            pass

        nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet)
        self._nc = nc

        async def record(msg: Any) -> None:
            self.messages.append((msg.subject, msg.data, dict(msg.headers or {})))

        await nc.subscribe(">", cb=record)
        await nc.flush()
        self._ready.set()
        while True:
            await asyncio.sleep(3600)


@pytest.fixture(scope="session")
def slack() -> Iterator[Receiver]:
    """A server that answers like Slack's Web API; the session's notifier posts to it."""
    receiver = Receiver(slack_ok())
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def pagerduty() -> Iterator[Receiver]:
    """A server standing in for PagerDuty's Events API (202 Accepted); the session's notifier posts to it."""
    receiver = Receiver(Reply(202, b'{"status": "success"}'))
    yield receiver
    receiver.close()


# The test receivers listen on 127.0.0.1, which the default egress policy refuses; the rest of loopback
# stays refused, for the tests that prove it.
LOOPBACK_WEBHOOKS = {"CERTCHECK_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32"}
NOTIFIER_TEST_ENV = {"CERTCHECK_NOTIFY_MAX_ATTEMPTS": "4", **LOOPBACK_WEBHOOKS}


CERT_MANAGER_CRD = Path(__file__).resolve().parent / "crds" / "cert-manager-certificates.yaml"


@contextlib.contextmanager
def running(
    stack: Stack, services: dict[str, dict[str, str]] | None = None, crds: tuple[Path, ...] = ()
) -> Iterator[Stack]:
    """The stack's control plane and nats-server started, ``crds`` installed, and its services unless
    ``services`` is None (then each service's extra environment); everything stopped after, or if
    starting fails."""
    try:
        stack.start_infrastructure()
        for crd in crds:
            apply_crd(api_client(stack.control_plane.kubeconfig), crd)
        if services is not None:
            stack.start_services(services)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, slack: Receiver, pagerduty: Receiver) -> Iterator[Stack]:
    services = {
        "notifier": {
            "CERTCHECK_SLACK_API_URL": slack.url,
            "CERTCHECK_PAGERDUTY_API_URL": pagerduty.url,
            **NOTIFIER_TEST_ENV,
        },
        "watcher": {"CERTCHECK_SECRET_TYPES": "kubernetes.io/tls,Opaque"},
    }
    # cert-manager's Certificates are served, so the watcher reads their renewal times (test_renewal.py).
    with running(Stack(Path(tmp_path_factory.mktemp("certcheck"))), services, (CERT_MANAGER_CRD,)) as stack:
        yield stack


@pytest.fixture(scope="session")
def plain_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of its own (no users), for tests of the bus plumbing alone."""
    server = NatsServer(tmp_path_factory.mktemp("plain-nats"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def bus_tap(stack: Stack) -> Iterator[BusTap]:
    tap = BusTap(stack.nats.url)
    tap.start()
    yield tap
    tap.stop()


@pytest.fixture(scope="session")
def api(stack: Stack) -> client.ApiClient:
    return api_client(stack.control_plane.kubeconfig)


@pytest.fixture(scope="session")
def core_api(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom_api(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def namespace(core_api: client.CoreV1Api) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core_api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll until ``probe`` returns something truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


# Every durable consumer of the pipeline (stream, consumer): the work the services have left to do (but
# the evaluator's changes: it takes them from its view, and tells whether any wait).
PIPELINE_CONSUMERS = (
    *((TRIGGERS.name, evaluator_due_consumer(p)) for p in range(DEFAULT_PARTITIONS)),
    (RESULTS.name, RECORDER_CONSUMER),
    (KUBE_EVENTS.name, RECORDER_EVENTS_CONSUMER),
    (RESULTS.name, NOTIFIER_CONSUMER),
)
PIPELINE_STREAMS = (OBJECTS.name, TRIGGERS.name, RESULTS.name, KUBE_EVENTS.name)


def evaluator_changes_waiting(stack: Stack) -> float:
    """In how many partitions the evaluator has object changes it has not acted on (0 when it is not
    running: what it has not read waits in the stream for its start-up evaluation)."""
    port = stack.http_ports.get(stack.process_of("evaluator"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return 0.0
    name = "certcheck_evaluator_changes_waiting "
    return sum(float(line[len(name) :]) for line in lines if line.startswith(name))


def wait_idle(stack: Stack, timeout: float = 30.0, interval: float = 0.2) -> None:
    """Until the pipeline has nothing left to do: no durable consumer has a message waiting or one
    delivered and not acknowledged yet (a nak'ed retry counts until it is acknowledged), and no stream
    grew meanwhile, seen twice in a row ``interval`` apart. Every service acknowledges only once a
    message's effects are out (published, written, sent), so an absence asserted after this is proven.

    What the watcher has not published yet is pending nowhere: first see that it published the change
    that is to have (or not have) effects, or use ``wait_settled``."""

    async def idle() -> None:
        nc = await nats.connect(stack.nats.url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout
            previous: dict[str, int] | None = None
            while True:
                busy: dict[str, str] = {}
                for stream, durable in PIPELINE_CONSUMERS:
                    try:
                        info = await js.consumer_info(stream, durable)
                    except NotFoundError:
                        busy[durable] = "missing"
                        continue
                    if info.num_pending or info.num_ack_pending:
                        busy[durable] = f"{info.num_pending} pending, {info.num_ack_pending} unacknowledged"
                waiting = evaluator_changes_waiting(stack)
                if waiting:
                    busy["evaluator"] = f"changes waiting in {waiting:.0f} partitions"
                tails = {name: (await js.stream_info(name)).state.last_seq for name in PIPELINE_STREAMS}
                if not busy and tails == previous:
                    return
                if time.monotonic() > deadline:
                    seen = busy or f"idle, but the streams grew: {previous} -> {tails}"
                    raise AssertionError(f"the pipeline not idle after {timeout}s: {seen}")
                previous = None if busy else tails
                await asyncio.sleep(interval)
        finally:
            await nc.close()

    asyncio.run(idle())


def last_message(stack: Stack, stream: str, subject: str) -> Any | None:
    """The last message a stream holds on a subject (None: none)."""

    async def read() -> Any | None:
        nc = await nats.connect(stack.nats.url)
        try:
            return await nc.jetstream().get_last_msg(stream, subject)
        except NotFoundError:
            return None
        finally:
            await nc.close()

    return asyncio.run(read())


def published_version(stack: Stack, kind: str, namespace: str, name: str) -> str | None:
    """The resourceVersion of the object's last message on the objects stream: what the watcher
    published of it last (None: nothing)."""

    msg = last_message(stack, OBJECTS.name, test_subjects.object_subject(kind, namespace, name))
    return (msg.headers or {}).get(HDR_RESOURCE_VERSION) if msg else None


def published(stack: Stack, kind: str, namespace: str, name: str, resource_version: str) -> bool:
    """Whether the watcher has published the object at ``resource_version`` or later (later: what
    certcheck wrote in answer may be out already, and the stream keeps the last message only)."""
    found = published_version(stack, kind, namespace, name)
    return found is not None and found.isdigit() and int(found) >= int(resource_version)


def watcher_progress(stack: Stack) -> dict[str, int]:
    """Per watch (scope), the resourceVersion up to which the watcher has published everything and
    saved that it did (about once a second)."""

    async def read() -> dict[str, int]:
        nc = await nats.connect(stack.nats.url)
        try:
            kv = await nc.jetstream().key_value(WATCHER_STATE_BUCKET)
            try:
                keys = await kv.keys()
            except NoKeysError:
                return {}
            found = {}
            for key in keys:
                entry = await kv.get(key)
                if key.startswith("rv.") and entry.value and entry.value.isdigit():  # not what it keeps else
                    found[key.removeprefix("rv.")] = int(entry.value)
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def watcher_behind(stack: Stack, versions: dict[tuple[str, str], int]) -> list[str]:
    """The objects (by scope and name, at a resourceVersion) the watcher has not published up to yet."""
    progress = watcher_progress(stack)
    return [
        f"{scope} {name}@{version} (the watch at {progress[scope]})"
        for (scope, name), version in versions.items()
        if scope in progress and progress[scope] < version
    ]


def wait_settled(stack: Stack, cluster: Cluster, namespace: str, timeout: float = 30.0) -> None:
    """Until nothing more happens in ``namespace`` by itself. The pipeline being idle is not enough: what
    certcheck writes (a status, annotations, a failure) comes back through the watcher and is evaluated
    again. So, until a round sees no new write: the pipeline idle, the watcher past the current version
    of every CertCheck and Secret of the namespace, the pipeline idle again."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.5, deadline - time.monotonic())

    while True:
        wait_idle(stack, timeout=left())
        versions = cluster.versions(namespace)
        while behind := watcher_behind(stack, versions):
            assert time.monotonic() < deadline, f"the watcher not past every write after {timeout}s: {behind}"
            time.sleep(0.1)
        wait_idle(stack, timeout=left())
        if cluster.versions(namespace) == versions:
            return
        assert time.monotonic() < deadline, f"{namespace} still changing after {timeout}s"


class Cluster:
    """Small helpers over the real API server for tests."""

    def __init__(self, core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
        self.core = core
        self.custom = custom

    def create_tls_secret(
        self, namespace: str, name: str, cert_pem: bytes, key_pem: bytes, labels: dict[str, str] | None = None
    ) -> client.V1Secret:
        from devcluster.certs import tls_secret_data

        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
            type="kubernetes.io/tls",
            data=tls_secret_data(cert_pem, key_pem),
        )
        return self.core.create_namespaced_secret(namespace, body)

    def create_certcheck(
        self,
        namespace: str,
        name: str,
        selector: dict[str, Any] | None,
        threshold: int | None = 30,
        notification: dict[str, Any] | None = None,
        **spec_fields: Any,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"selector": selector} if selector is not None else {}
        spec.update(spec_fields)
        if notification is not None:
            spec["notification"] = notification
        if threshold is not None:
            spec["threshold"] = threshold
        body = {
            "apiVersion": f"{CERTCHECK_GROUP}/{CERTCHECK_VERSION}",
            "kind": "CertCheck",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
            CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL, body
        )

    def certcheck(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL, name
        )

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.certcheck(namespace, name).get("status") or {}

    def wait_status(
        self, namespace: str, name: str, timeout: float = 15.0, **expected: Any
    ) -> dict[str, Any]:
        """The CertCheck's status once every given field has the given value (e.g. ``validCount=1``)."""
        wanted = ", ".join(f"{k}={v!r}" for k, v in expected.items())
        return wait_for(
            lambda: (
                (s := self.status(namespace, name)) and all(s.get(k) == v for k, v in expected.items()) and s
            ),
            timeout=timeout,
            what=f"status of {namespace}/{name} with {wanted}",
        )

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        return self.core.read_namespaced_secret(name, namespace).metadata.annotations or {}

    def versions(self, namespace: str) -> dict[tuple[str, str], int]:
        """The resourceVersion of every Secret and CertCheck of a namespace, by the watcher's scope that
        sees it (a scope the watcher does not have is ignored by ``wait_settled``)."""
        found = {
            (f"{subjects.KIND_SECRET}.{s.type}", s.metadata.name): int(s.metadata.resource_version)
            for s in self.core.list_namespaced_secret(namespace).items
        }
        certchecks = self.custom.list_namespaced_custom_object(
            CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL
        )
        for c in certchecks["items"]:
            found[(subjects.KIND_CERTCHECK, c["metadata"]["name"])] = int(c["metadata"]["resourceVersion"])
        return found

    def events(self, namespace: str, kind: str | None = None, name: str | None = None) -> list[Any]:
        items = self.core.list_namespaced_event(namespace).items
        return [
            e
            for e in items
            if (kind is None or e.involved_object.kind == kind)
            and (name is None or e.involved_object.name == name)
        ]


@pytest.fixture(scope="session")
def cluster(core_api: client.CoreV1Api, custom_api: client.CustomObjectsApi) -> Cluster:
    return Cluster(core_api, custom_api)


class AuditLog:
    """Reads the API server's audit log: who wrote what, from a mark on."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def writes(self, since: int, namespace: str, user: str | None = None) -> list[tuple[str, str, str]]:
        """(verb, resource[/subresource], name) of every accepted write in a namespace since a mark."""
        import json

        found = []
        with self.path.open("rb") as log:
            log.seek(since)
            for line in log:
                entry = json.loads(line)
                ref = entry.get("objectRef") or {}
                if ref.get("namespace") != namespace or entry.get("stage") != "ResponseComplete":
                    continue
                if user is not None and entry.get("user", {}).get("username") != user:
                    continue
                if entry.get("responseStatus", {}).get("code", 200) >= 300:
                    continue
                subresource = f"/{ref['subresource']}" if ref.get("subresource") else ""
                resource = ref.get("resource", "") + subresource
                found.append((entry["verb"], resource, ref.get("name", "")))
        return found


@pytest.fixture(scope="session")
def audit(stack: Stack) -> AuditLog:
    return AuditLog(stack.control_plane.audit_log)


RECORDER_USER = "system:serviceaccount:certcheck:recorder"


@pytest.fixture(scope="session")
def watcher_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A control plane and nats-server of their own, with no service running: for tests that start
    watchers with settings of their own, or fence them, without touching the shared stack's watcher."""
    with running(Stack(Path(tmp_path_factory.mktemp("watchers")))) as stack:
        yield stack
