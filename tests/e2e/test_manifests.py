"""The manifests in k8s/: kustomize renders every overlay, and the real API server accepts every object.

Kinds the 1.20 test server does not serve are checked by its own schema validation all the same: the
Prometheus Operator's CRDs (vendored in tests/schemas/) are installed first, and a policy/v1
PodDisruptionBudget is posted as policy/v1beta1, whose fields it uses are the same.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.client.exceptions import ApiException

from devcluster import binaries
from devcluster.pki import write_pki
from devcluster.stack import REPO, apply_crd
from schemas.permissions import ADMIN_USER, NATS_USERS, password_variable

K8S = REPO / "k8s"
BASE = K8S / "base"
OVERLAYS = ("overlays/dev", "overlays/prod", "overlays/small")
PROMETHEUS_OPERATOR_CRDS = sorted((REPO / "tests" / "schemas").glob("monitoring.coreos.com_*.yaml"))
FIELD_MANAGER = "certcheck-manifest-test"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(binaries.kustomize()), "build", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _without_empty_defaults(schema: Any) -> Any:
    """1.20 reads ``default: ""`` as null and refuses the CRD; defaults play no part in validation."""
    if isinstance(schema, dict):
        return {k: _without_empty_defaults(v) for k, v in schema.items() if not (k == "default" and v == "")}
    if isinstance(schema, list):
        return [_without_empty_defaults(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def dyn(api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> dynamic.DynamicClient:
    for path in PROMETHEUS_OPERATOR_CRDS:
        crd = tmp_path_factory.mktemp("crds") / path.name
        crd.write_text(yaml.safe_dump(_without_empty_defaults(yaml.safe_load(path.read_text()))))
        apply_crd(api, crd)
    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name="certcheck"))
        )
    except ApiException as exc:
        assert exc.status == 409
    return dynamic.DynamicClient(api)


def apply(dyn: dynamic.DynamicClient, obj: dict[str, Any], dry_run: bool = False) -> None:
    """Server-side apply; with ``dry_run`` the server validates the object (schema, defaults,
    admission) as if it were created or updated, and stores nothing."""
    if obj["apiVersion"] == "policy/v1":  # 1.20 serves policy/v1beta1 only
        obj = {**obj, "apiVersion": "policy/v1beta1"}
    resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    dyn.server_side_apply(
        resource,
        body=obj,
        name=obj["metadata"]["name"],
        namespace=obj["metadata"].get("namespace"),
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
        **({"dry_run": "All"} if dry_run else {}),
    )


def dry_run_apply(dyn: dynamic.DynamicClient, obj: dict[str, Any]) -> None:
    apply(dyn, obj, dry_run=True)


@pytest.mark.parametrize("kustomization", ["base", "nats", "monitoring", *OVERLAYS])
def test_kustomize_renders(kustomization: str) -> None:
    assert render(kustomization)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_a_server_side_dry_run(dyn: dynamic.DynamicClient, overlay: str) -> None:
    objects = render(overlay)
    for obj in objects:
        try:
            dry_run_apply(dyn, obj)
        except ApiException as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} refused: {exc.body}")
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "ConfigMap", "NetworkPolicy"} <= kinds


def test_an_invalid_object_would_be_refused(dyn: dynamic.DynamicClient) -> None:
    monitor = by_kind(render("monitoring"), "ServiceMonitor")["certcheck"]
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": 8080}]}}  # port must be a name
    with pytest.raises(ApiException):
        dry_run_apply(dyn, broken)


def test_the_base_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_dev_runs_one_of_everything_with_one_nats_server_and_no_disruption_budgets() -> None:
    objects = render("overlays/dev")
    assert {d["spec"]["replicas"] for d in by_kind(objects, "Deployment").values()} == {1}
    assert by_kind(objects, "StatefulSet")["nats"]["spec"]["replicas"] == 1
    assert by_kind(objects, "PodDisruptionBudget") == {}
    [config] = by_kind(objects, "ConfigMap").values()
    assert "cluster {" not in config["data"]["cluster.conf"]


def test_prod_runs_a_three_node_nats_cluster_with_streams_replicated_three_times() -> None:
    objects = render("overlays/prod")
    assert by_kind(objects, "StatefulSet")["nats"]["spec"]["replicas"] == 3
    [config] = by_kind(objects, "ConfigMap").values()
    assert config["data"]["cluster.conf"].count("nats://nats-") == 3
    assert config["data"]["auth.conf"] == (K8S / "nats" / "auth.conf").read_text()
    deployments = by_kind(objects, "Deployment")
    for deployment in deployments.values():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "CERTCHECK_STREAM_REPLICAS", "value": "3"} in container["env"]
    assert deployments["certcheck-evaluator"]["spec"]["replicas"] == 3
    assert deployments["certcheck-watcher"]["spec"]["replicas"] == 2  # one active, one standby (lease)
    assert deployments["certcheck-exporter"]["spec"]["replicas"] == 2  # each holds a share of the partitions
    assert by_kind(objects, "Secret") == {}  # production brings its own NATS passwords
    assert set(by_kind(objects, "ServiceMonitor")) == set(by_kind(objects, "PrometheusRule")) == {"certcheck"}


def test_small_runs_every_service_in_one_deployment_as_the_all_user_with_every_services_roles() -> None:
    objects = render("overlays/small")
    [(name, deployment)] = by_kind(objects, "Deployment").items()
    assert name == "certcheck-all"
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["all"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CERTCHECK_NATS_USER"]["value"] == "all"
    assert env["CERTCHECK_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "all"
    bound = {
        b["roleRef"]["name"]
        for b in by_kind(objects, "ClusterRoleBinding").values()
        if {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "certcheck"}
        in b["subjects"]
    }
    assert bound == {"certcheck-watcher", "certcheck-recorder", "certcheck-notifier"}
    assert set(by_kind(objects, "Service")) == {"certcheck-all", "nats", "nats-headless"}
    assert by_kind(objects, "PodDisruptionBudget") == {}


def test_nats_runs_with_a_soft_memory_limit_its_container_limit_and_64_mib_on_a_small_cluster() -> None:
    limits = {}
    for overlay in OVERLAYS:
        container = by_kind(render(overlay), "StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"][
            0
        ]
        env = {e["name"]: e for e in container["env"]}
        limits[overlay] = (env["GOMEMLIMIT"], container["resources"]["limits"]["memory"])
    from_limit = {"name": "GOMEMLIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
    assert limits["overlays/dev"] == limits["overlays/prod"] == (from_limit, "1Gi")
    assert limits["overlays/small"] == ({"name": "GOMEMLIMIT", "value": "64MiB"}, "256Mi")


def test_every_service_connects_as_its_own_nats_user_with_a_password_from_the_secret() -> None:
    for name, deployment in by_kind(render("overlays/dev"), "Deployment").items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        service = name.removeprefix("certcheck-")
        assert env["CERTCHECK_NATS_USER"]["value"] == service
        secret_ref = env["CERTCHECK_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret_ref["key"] == service and secret_ref["name"].startswith("certcheck-nats-users")


def test_deployments_run_hardened_with_probes_and_limits() -> None:
    objects = render("overlays/prod")
    workloads = [*by_kind(objects, "Deployment").values(), *by_kind(objects, "StatefulSet").values()]
    assert {d["spec"]["template"]["spec"].get("serviceAccountName") for d in workloads} == {
        "watcher",
        "evaluator",
        "recorder",
        "notifier",
        "exporter",
        None,  # NATS needs no Kubernetes API access
    }
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/healthz?js-server-only=true")
        assert container["livenessProbe"]["httpGet"]["path"].startswith("/healthz")
        assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]


def _as_test_identity(obj: dict[str, Any]) -> dict[str, Any]:
    """An RBAC object of the namespaced-credentials overlay, renamed so that applying it for real leaves
    the suite's own notifier role alone: its notifier becomes ServiceAccount ``certcheck:nsc-notifier``."""
    text = yaml.safe_dump(obj).replace("certcheck-notifier", "nsc-notifier")
    renamed = yaml.safe_load(text)
    for subject in renamed.get("subjects", []):
        subject["name"] = "nsc-notifier"
    return renamed


def test_namespaced_credentials_let_the_notifier_get_secrets_only_in_the_chosen_namespaces(
    api: client.ApiClient, dyn: dynamic.DynamicClient
) -> None:
    objects = render("overlays/namespaced-credentials")
    rbac = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    notifier = [o for o in rbac if "certcheck-notifier" in o["metadata"]["name"]]
    core = client.CoreV1Api(api)
    for name in ("team-a", "team-b", "team-c"):
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except ApiException as exc:
            assert exc.status == 409
    for obj in map(_as_test_identity, notifier):
        apply(dyn, obj)

    def may_get_secrets(namespace: str) -> bool:
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user="system:serviceaccount:certcheck:nsc-notifier",
                groups=["system:serviceaccounts", "system:serviceaccounts:certcheck"],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="get", resource="secrets"
                ),
            )
        )
        answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
        return bool(answer.status.allowed)

    assert may_get_secrets("team-a") and may_get_secrets("team-b")
    assert not may_get_secrets("team-c")
    assert not may_get_secrets("certcheck")


def _nats_config(overlay: str) -> dict[str, str]:
    [config] = [
        o
        for o in render(overlay)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("certcheck-nats")
    ]
    return dict(config["data"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_nats_configuration_is_accepted_by_nats_server(overlay: str, tmp_path: Path) -> None:
    """nats-server -t reads every file as the pod would (paths moved to a scratch directory, with real
    certificates where TLS is configured): a typo or a wrong TLS path fails here, not in a cluster."""
    pki = write_pki(tmp_path / "pki")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name, source in (("tls.crt", "server.crt"), ("tls.key", "server.key"), ("ca.crt", "ca.crt")):
        (tls / name).write_bytes(pki[source].read_bytes())
    for name, text in _nats_config(overlay).items():
        text = text.replace("/etc/nats-tls", str(tls)).replace("/data/", f"{tmp_path}/data/")
        (tmp_path / name).write_text(text.replace("/tmp/nats.pid", f"{tmp_path}/nats.pid"))
    passwords = {password_variable(user): "pw-test" for user in (ADMIN_USER, *NATS_USERS)}
    checked = subprocess.run(
        [str(binaries.nats_server()), "-c", str(tmp_path / "nats.conf"), "-t"],
        capture_output=True,
        text=True,
        env={**passwords, "POD_NAME": "nats-0", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prod_speaks_tls_to_clients_and_mutual_tls_between_servers_and_every_service_verifies_it() -> None:
    config = _nats_config("overlays/prod")
    assert "tls {" in config["tls.conf"] and "include ./tls.conf" in config["nats.conf"]
    assert "verify: true" in config["cluster.conf"].split("tls {", 1)[1]
    objects = render("overlays/prod")
    [nats] = by_kind(objects, "StatefulSet").values()
    assert {"name": "tls", "secret": {"secretName": "certcheck-nats-tls"}} in nats["spec"]["template"][
        "spec"
    ]["volumes"]
    for name, deployment in by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["CERTCHECK_NATS_CA"] == "/etc/nats-ca/ca.crt", name
        [volume] = [v for v in pod["volumes"] if v["name"] == "nats-ca"]
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], name  # never the key


def test_the_cert_manager_component_issues_the_certificate_nats_tls_mounts() -> None:
    docs = documents(K8S / "components" / "nats-tls-cert-manager" / "certificates.yaml")
    [server] = [
        d for d in docs if d["kind"] == "Certificate" and d["metadata"]["name"] == "certcheck-nats-tls"
    ]
    assert server["spec"]["secretName"] == "certcheck-nats-tls"
    assert {"server auth", "client auth"} <= set(server["spec"]["usages"])
    assert {"nats.certcheck.svc", "*.nats-headless.certcheck.svc"} <= set(server["spec"]["dnsNames"])


def _policy_allows(policy: dict[str, Any], direction: str, port: int | str) -> list[dict[str, Any]]:
    """The rules of a policy that open ``port``, with their peers."""
    return [
        rule
        for rule in policy["spec"].get(direction, [])
        if any(p.get("port") == port for p in rule.get("ports", []))
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_prometheus_only_to_metrics_and_let_the_notifier_out_to_dns_and_https(
    overlay: str,
) -> None:
    policies = by_kind(render(overlay), "NetworkPolicy")
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    [metrics] = _policy_allows(policies["certcheck-metrics"], "ingress", "http")
    assert metrics["from"] == [prometheus]
    assert policies["certcheck-metrics"]["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "certcheck"
    }
    [monitor] = _policy_allows(policies["nats"], "ingress", 8222)
    assert monitor["from"] == [prometheus]
    egress = policies["certcheck-notifier-egress"]
    assert egress["spec"]["policyTypes"] == ["Egress"]
    opened = {(p["port"], p.get("protocol")) for rule in egress["spec"]["egress"] for p in rule["ports"]}
    assert opened == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (4222, "TCP")}
    notifying = "all" if overlay == "overlays/small" else "notifier"
    selected = egress["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
    assert selected == notifying
    assert any(
        d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == notifying
        for d in by_kind(render(overlay), "Deployment").values()
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_admits_clients_only_from_certcheck_pods_and_routes_only_from_other_nats_pods(
    overlay: str,
) -> None:
    nats_pods = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/part-of": "certcheck"}
    policy = by_kind(render(overlay), "NetworkPolicy")["nats"]
    assert policy["spec"]["podSelector"]["matchLabels"] == nats_pods
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    clients = [peer for rule in _policy_allows(policy, "ingress", 4222) for peer in rule["from"]]
    assert clients == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "certcheck"}}},
        {"podSelector": {"matchLabels": nats_pods}},
    ]
    routes = [peer for rule in _policy_allows(policy, "ingress", 6222) for peer in rule["from"]]
    assert routes == [{"podSelector": {"matchLabels": nats_pods}}]
