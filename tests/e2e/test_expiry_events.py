"""An outside system subscribes to the public expiry events and gets, for a scripted life of two
certificates, exactly the facts it should, in order per certificate, each valid against its published
JSON Schema, each once, even across an evaluator crash and a nats-server restart: the stream holds each
fact once, and a delivery repeated because an ack was lost is known by its id, as docs/events.md tells
subscribers.

The subscriber below uses only nats-py, the committed schemas and the documented contract: it must keep
working for any subscriber written against docs/events.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
from kubernetes import client

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from devcluster.stack import REPO, Stack, api_client
from tests.conftest import Cluster, running, wait_for, wait_settled

SCHEMAS = REPO / "schemas" / "events" / "v1"


class OutsideSubscriber:
    """Reads `certcheck.v1.events.<cluster>.<namespace>.>` as the NATS user `subscriber`, through a
    durable consumer of its own, validating each event against the schema its `ce-dataschema` names."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.stack, self.namespace = stack, namespace
        self.received: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self.redelivered = 0
        self.invalid: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def _schema(self, uri: str) -> dict[str, Any]:
        return json.loads((SCHEMAS / Path(uri).name).read_text())

    async def _run(self) -> None:
        users = self.stack.nats.users or {}
        while not self._stop.is_set():
            try:
                nc = await nats.connect(
                    self.stack.nats.address,
                    user="subscriber",
                    password=users["subscriber"],
                    inbox_prefix="_INBOX_subscriber",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                )
                js = nc.jetstream()
                sub = await js.pull_subscribe(
                    f"certcheck.v1.events.default.{self.namespace}.>",
                    durable=f"outside-{self.namespace}",
                    stream="CERTCHECK_EVENTS",
                )
                while not self._stop.is_set():
                    try:
                        msgs = await sub.fetch(50, timeout=1)
                    except (TimeoutError, nats.errors.TimeoutError):
                        continue
                    for msg in msgs:
                        headers = msg.headers or {}
                        data = json.loads(msg.data)
                        try:
                            jsonschema.validate(data, self._schema(headers["ce-dataschema"]))
                        except jsonschema.ValidationError as exc:
                            self.invalid.append(str(exc))
                        if headers["ce-id"] in self.ids:
                            self.redelivered += 1  # an ack lost with the server: the id says it is a repeat
                        else:
                            self.ids.add(headers["ce-id"])
                            self.received.append({"id": headers["ce-id"], "type": headers["ce-type"], **data})
                        await msg.ack()
                await nc.close()
            except Exception:  # the server restarting: connect again, the durable consumer resumes
                await asyncio.sleep(0.5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def facts(self, secret: str) -> list[tuple[str, str]]:
        """(type, state) of each event of one Secret, in order."""
        return [(e["type"].split(".")[-2], e["state"]) for e in self.received if e["objectName"] == secret]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own for the variant that kills nats-server: a server killed mid-write may lose
    what it had not flushed, which must not leak into the session's shared stack and its other tests."""
    with running(Stack(Path(tmp_path_factory.mktemp("expiry-events"))), {}) as stack:
        yield stack


@dataclass
class Setting:
    stack: Stack
    cluster: Cluster
    namespace: str
    faults: bool


@pytest.fixture(params=[False, True], ids=["steady", "evaluator-and-nats-restarted"])
def setting(request: pytest.FixtureRequest, stack: Stack, cluster: Cluster, namespace: str) -> Setting:
    if not request.param:
        return Setting(stack, cluster, namespace, False)
    own: Stack = request.getfixturevalue("own_stack")
    api = api_client(own.control_plane.kubeconfig)
    own_cluster = Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api))
    name = f"t-{uuid.uuid4().hex[:10]}"
    own_cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return Setting(own, own_cluster, name, True)


@pytest.fixture
def subscriber(setting: Setting) -> Any:
    outside = OutsideSubscriber(setting.stack, setting.namespace)
    yield outside
    outside.close()


async def stored(stack: Stack, namespace: str) -> int:
    nc = await nats.connect(stack.nats.url)
    try:
        info = await nc.jetstream().stream_info(
            "CERTCHECK_EVENTS", subjects_filter=f"certcheck.v1.events.default.{namespace}.>"
        )
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


def relabel(cluster: Cluster, namespace: str, name: str, app: str) -> None:
    cluster.core.patch_namespaced_secret(name, namespace, {"metadata": {"labels": {"app": app}}})


def test_an_outside_subscriber_receives_each_fact_once_in_order(
    setting: Setting, subscriber: OutsideSubscriber
) -> None:
    """web: seen, nears its threshold, rotated, relabelled out. api: seen near expiry, expires (the
    scheduled evaluation at that very moment), deleted. db: seen, nears its threshold, its CertCheck
    deleted."""
    stack, cluster, namespace, faults = setting.stack, setting.cluster, setting.namespace, setting.faults
    cert, key = expiring_in(40)
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=20)
    soon, soon_key = make_cert("api.test", not_after=expiry)
    for name, pem, pem_key in (("web", cert, key), ("api", soon, soon_key), ("db", cert, key)):
        cluster.create_tls_secret(namespace, name, pem, pem_key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}}, threshold=30)
    wait_for(lambda: len(subscriber.received) >= 3, timeout=30, what="all three discovered")

    if faults:
        stack.restart_service("evaluator")  # SIGKILL
    # The threshold moves past web's and db's notAfter: their state changes.
    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "c", {"spec": {"threshold": 50}}
    )
    wait_for(lambda: len(subscriber.received) >= 5, timeout=30, what="web and db ExpiringSoon")
    wait_for(lambda: len(subscriber.received) >= 6, timeout=40, what="api Expired when its time came")

    if faults:
        stack.nats.kill()
        stack.nats.start()
    renewed, renewed_key = expiring_in(100)
    cluster.core.patch_namespaced_secret("web", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(lambda: len(subscriber.received) >= 8, timeout=40, what="web rotated and Valid")
    relabel(cluster, namespace, "web", "other")
    cluster.core.delete_namespaced_secret("api", namespace)
    wait_for(lambda: len(subscriber.received) >= 10, timeout=30, what="web and api removed")
    cluster.custom.delete_namespaced_custom_object("certcheck.dev", "v1alpha1", namespace, "certchecks", "c")
    wait_for(lambda: len(subscriber.received) >= 11, timeout=30, what="db removed with the CertCheck")

    assert subscriber.facts("web") == [
        ("discovered", "Valid"),
        ("statechanged", "ExpiringSoon"),
        ("rotated", "Valid"),
        ("statechanged", "Valid"),
        ("removed", "Valid"),
    ]
    assert subscriber.facts("api") == [
        ("discovered", "ExpiringSoon"),
        ("statechanged", "Expired"),
        ("removed", "Expired"),
    ]
    assert subscriber.facts("db") == [
        ("discovered", "Valid"),
        ("statechanged", "ExpiringSoon"),
        ("removed", "ExpiringSoon"),
    ]
    removed = {e["objectName"]: e["removedBecause"] for e in subscriber.received if e.get("removedBecause")}
    assert removed == {"web": "NoLongerSelected", "api": "ObjectDeleted", "db": "CertCheckDeleted"}
    assert subscriber.invalid == []
    assert len(subscriber.received) == 11
    assert asyncio.run(stored(stack, namespace)) == 11  # each fact kept once, whatever was redelivered
    # Replayed from the start, the stream tells the same history, and `certcheck history` prints it.
    history = subprocess.run(
        [sys.executable, "-m", "services.cli", "history", f"{namespace}/web", "--nats-url", stack.nats.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[1] for line in history] == [kind for kind, _ in subscriber.facts("web")]
    # Nothing more comes: a restarted evaluator tells nothing it told before.
    stack.restart_service("evaluator", kill=False)
    wait_settled(stack, cluster, namespace)
    assert len(subscriber.received) == 11
