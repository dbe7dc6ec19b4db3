"""Helpers for tests that run watchers of their own on ``watcher_stack`` (tests/conftest.py): what the
watcher published, read straight from the objects stream as the NATS admin, and its watches and lease
from its metrics."""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import nats
import pytest
from kubernetes import client

from devcluster.certs import expiring_in
from devcluster.cluster import ServiceProcess
from devcluster.stack import Stack, api_client
from schemas import subjects
from schemas.streams import HDR_DIGEST, HDR_RESOURCE_VERSION, OBJECTS
from tests.conftest import Cluster, wait_for

T = TypeVar("T")

TOMBSTONE = "deleted"  # the digest header of an ObjectDeleted message (services/watcher/publisher.py)


class ObjectsStream:
    """CERTCHECK_OBJECTS as the admin reads it: one last message per object subject."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self.nc = self._run(nats.connect(url, max_reconnect_attempts=-1))
        self.js = self.nc.jetstream(timeout=5)

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(work)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this reader's connection (for tests that change the bus)."""
        return self._run(work)

    def close(self) -> None:
        self._run(self.nc.close())
        self._loop.close()

    def in_namespace(self, namespace: str) -> dict[tuple[str, str], dict[str, str]]:
        """(kind, name) -> headers of the last message of every object of ``namespace`` in the stream."""
        info = self._run(
            self.js.stream_info(OBJECTS.name, subjects_filter=f"{subjects.PREFIX}.objects.*.*.{namespace}.>")
        )
        found = {}
        for subject in info.state.subjects or {}:
            _, kind, _, name = subjects.split_object_subject(subject)
            message = self._run(self.js.get_last_msg(OBJECTS.name, subject))
            found[(kind, name)] = dict(message.headers or {})
        return found

    def published(self, namespace: str) -> set[tuple[str, str]]:
        """(kind, name) of every object of ``namespace`` whose last message is not a tombstone."""
        found = self.in_namespace(namespace)
        return {key for key, headers in found.items() if headers[HDR_DIGEST] != TOMBSTONE}

    def version(self, namespace: str, kind: str, name: str) -> str | None:
        """The resourceVersion of the object's last message ("deleted:<rv>" for a tombstone), if any."""
        headers = self.in_namespace(namespace).get((kind, name))
        if headers is None:
            return None
        rv = headers[HDR_RESOURCE_VERSION]
        return f"{TOMBSTONE}:{rv}" if headers[HDR_DIGEST] == TOMBSTONE else rv

    def wait_published(
        self, namespace: str, *expected: tuple[str, str], timeout: float = 20.0
    ) -> set[tuple[str, str]]:
        """Every object of ``namespace`` published, once each of ``expected`` is."""
        return wait_for(
            lambda: (found := self.published(namespace)) >= set(expected) and found,
            timeout=timeout,
            what=f"{sorted(expected)} published in {namespace}",
        )


def metrics(stack: Stack, instance: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.http_ports[instance]}/metrics", timeout=5) as r:
        return [line for line in r.read().decode().splitlines() if not line.startswith("#")]


def leader(stack: Stack, instance: str) -> float | None:
    """The instance's certcheck_leader gauge for the watcher lease (None before it has one)."""
    for line in metrics(stack, instance):
        if line.startswith('certcheck_leader{lease="watcher"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


_WATCH = re.compile(r'^certcheck_kubernetes_connected\{resource="([^"]+)"\} 1\.0$')


def connected_watches(stack: Stack, instance: str) -> set[str]:
    """The resources the instance has a watch of that is up (e.g. ``secrets/Opaque``, ``configmaps``)."""
    return {m.group(1) for line in metrics(stack, instance) if (m := _WATCH.match(line))}


def start_watcher(
    stack: Stack, instance: str, env: dict[str, str], active: bool = True, timeout: float = 30
) -> ServiceProcess:
    """Start a watcher replica; with ``active``, wait until it holds the lease."""
    process = stack.start_service("watcher", env, instance=instance)
    if active:
        wait_for(lambda: leader(stack, instance) == 1, timeout=timeout, what=f"{instance} holding the lease")
    return process


def kube(stack: Stack) -> Cluster:
    api = api_client(stack.control_plane.kubeconfig)
    return Cluster(client.CoreV1Api(api), client.CustomObjectsApi(api))


def new_namespace(cluster: Cluster) -> str:
    name = f"w-{uuid.uuid4().hex[:10]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


CERT, KEY = expiring_in(100)


def create_secret(
    cluster: Cluster, namespace: str, name: str, secret_type: str, labels: dict[str, str] | None = None
) -> client.V1Secret:
    """A Secret of any type holding a certificate (``tls.crt``/``tls.key`` for kubernetes.io/tls)."""
    if secret_type == "kubernetes.io/tls":
        return cluster.create_tls_secret(namespace, name, CERT, KEY, labels=labels)
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        type=secret_type,
        string_data={"cert.pem": CERT.decode()},
    )
    return cluster.core.create_namespaced_secret(namespace, body)


def create_configmap(
    cluster: Cluster, namespace: str, name: str, labels: dict[str, str] | None = None
) -> client.V1ConfigMap:
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}), data={"ca.crt": CERT.decode()}
    )
    return cluster.core.create_namespaced_config_map(namespace, body)


def relabel(cluster: Cluster, namespace: str, kind: str, name: str, labels: dict[str, str | None]) -> str:
    """Merge-patch an object's labels; its new resourceVersion."""
    patch = {"metadata": {"labels": labels}}
    if kind == subjects.KIND_SECRET:
        return str(cluster.core.patch_namespaced_secret(name, namespace, patch).metadata.resource_version)
    return str(cluster.core.patch_namespaced_config_map(name, namespace, patch).metadata.resource_version)


# Fixtures of the modules that run watchers of their own (import them there: they override the shared
# stack's fixtures of the same names).
@pytest.fixture(scope="module")
def stack(watcher_stack: Stack) -> Stack:
    return watcher_stack


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> Cluster:
    return kube(stack)


@pytest.fixture(scope="module")
def objects(stack: Stack) -> Iterator[ObjectsStream]:
    reader = ObjectsStream(stack.nats.url)
    yield reader
    reader.close()


@pytest.fixture
def ns(cluster: Cluster) -> str:
    return new_namespace(cluster)
