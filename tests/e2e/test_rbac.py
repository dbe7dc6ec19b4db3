"""The services run with exactly the roles of k8s/base/rbac.yaml (every other e2e test proves those
roles sufficient); here, that each is denied what it must not do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.certs import expiring_in
from devcluster.stack import Stack, api_client
from tests.conftest import Cluster


def as_service(stack: Stack, service: str) -> tuple[client.CoreV1Api, client.CustomObjectsApi]:
    api = api_client(stack.kubeconfigs[service])
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


def denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as exc:
        return exc.status == 403
    return False


@pytest.fixture
def secret(cluster: Cluster, namespace: str) -> str:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "target", cert, key)
    return "target"


def test_no_service_but_the_watcher_can_list_or_watch_secrets(stack: Stack, namespace: str) -> None:
    for service in ("evaluator", "recorder", "notifier", "exporter"):
        core, _ = as_service(stack, service)
        assert denied(lambda core=core: core.list_namespaced_secret(namespace)), service
        assert denied(lambda core=core: core.list_secret_for_all_namespaces(watch=False)), service
    watcher, _ = as_service(stack, "watcher")
    assert watcher.list_namespaced_secret(namespace).items is not None


def test_the_watcher_only_reads(stack: Stack, namespace: str, secret: str) -> None:
    core, custom = as_service(stack, "watcher")
    assert denied(
        lambda: core.patch_namespaced_secret(secret, namespace, {"metadata": {"labels": {"x": "y"}}})
    )
    assert denied(lambda: core.delete_namespaced_secret(secret, namespace))
    assert denied(lambda: core.patch_namespaced_config_map("any", namespace, {"metadata": {"labels": {}}}))
    assert denied(
        lambda: custom.create_namespaced_custom_object(
            "certcheck.dev",
            "v1alpha1",
            namespace,
            "certchecks",
            {
                "apiVersion": "certcheck.dev/v1alpha1",
                "kind": "CertCheck",
                "metadata": {"name": "x"},
                "spec": {"selector": {}},
            },
        )
    )


def test_the_recorder_cannot_read_secret_data_or_change_specs(
    stack: Stack, cluster: Cluster, namespace: str, secret: str
) -> None:
    core, custom = as_service(stack, "recorder")
    assert denied(lambda: core.read_namespaced_secret(secret, namespace))
    assert denied(lambda: core.list_namespaced_secret(namespace))
    assert denied(lambda: core.delete_namespaced_secret(secret, namespace))
    assert denied(lambda: core.patch_namespaced_config_map("any", namespace, {"metadata": {"labels": {}}}))
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"a": "b"}})
    assert denied(
        lambda: custom.patch_namespaced_custom_object(
            "certcheck.dev", "v1alpha1", namespace, "certchecks", "c", {"spec": {"threshold": 1}}
        )
    )


def test_the_notifier_reads_credentials_but_writes_no_secret_and_changes_no_spec(
    stack: Stack, cluster: Cluster, namespace: str, secret: str
) -> None:
    core, custom = as_service(stack, "notifier")
    assert not denied(lambda: core.read_namespaced_secret(secret, namespace))  # credentials it may read
    assert denied(
        lambda: core.patch_namespaced_secret(secret, namespace, {"metadata": {"labels": {"a": "b"}}})
    )
    assert denied(lambda: core.delete_namespaced_secret(secret, namespace))
    assert denied(lambda: core.patch_namespaced_config_map("any", namespace, {"metadata": {"labels": {}}}))
    cluster.create_certcheck(namespace, "n", {"matchLabels": {"a": "b"}})
    assert denied(
        lambda: custom.patch_namespaced_custom_object(
            "certcheck.dev", "v1alpha1", namespace, "certchecks", "n", {"spec": {"threshold": 1}}
        )
    )


def test_the_evaluator_and_the_exporter_have_no_kubernetes_access(stack: Stack, namespace: str) -> None:
    for service in ("evaluator", "exporter"):
        core, custom = as_service(stack, service)
        assert denied(lambda core=core: core.list_namespaced_event(namespace)), service
        assert denied(
            lambda custom=custom: custom.list_namespaced_custom_object(
                "certcheck.dev", "v1alpha1", namespace, "certchecks"
            )
        ), service
