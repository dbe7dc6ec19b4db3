"""The Kubernetes manifests in k8s/base, checked by the real API server (server-side dry-run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from devcluster.stack import REPO

BASE = REPO / "k8s" / "base"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def dry_run_raw(api: client.ApiClient, path: str, body: dict[str, Any]) -> None:
    import json

    headers = {"Content-Type": "application/json"}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, "POST", body)
    response = api.rest_client.pool_manager.request(
        "POST", f"{api.configuration.host}{path}?dryRun=All", body=json.dumps(body), headers=headers
    )
    assert response.status == 201, response.data[:500]


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_every_object_passes_a_server_side_dry_run(api: client.ApiClient) -> None:
    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="certcheck"))
        )
    except ApiException as exc:
        assert exc.status == 409
    checked = []
    for path in sorted(BASE.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "crd.yaml", "namespace.yaml", "rbac.yaml"):
            continue  # really applied by the test stack (the services run under the RBAC)
        for doc in documents(path):
            if doc["apiVersion"] == "policy/v1":
                # 1.20 serves only policy/v1beta1 (the fields used are the same) and the client has no
                # v1beta1 API any more: post it as it is.
                dry_run_raw(
                    api,
                    f"/apis/policy/v1beta1/namespaces/{doc['metadata']['namespace']}/poddisruptionbudgets",
                    {**doc, "apiVersion": "policy/v1beta1"},
                )
            else:
                utils.create_from_dict(api, doc, dry_run="All")
            checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert len(checked) >= 18


def test_deployments_run_hardened_with_probes_and_limits() -> None:
    deployments = [d for d in documents(BASE / "services.yaml") if d["kind"] == "Deployment"]
    assert {d["spec"]["template"]["spec"]["serviceAccountName"] for d in deployments} == {
        "watcher",
        "evaluator",
        "recorder",
        "notifier",
        "exporter",
    }
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    exporter = next(d for d in deployments if d["metadata"]["name"] == "certcheck-exporter")
    assert exporter["spec"]["replicas"] == 1  # the single scrape target for per-certificate series
