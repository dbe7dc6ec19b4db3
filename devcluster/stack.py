"""The whole local system: control plane, nats-server, the CRD, and the certcheck services."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, utils
from kubernetes.client.exceptions import ApiException

from devcluster.cluster import (
    ControlPlane,
    NatsServer,
    ServiceProcess,
    cluster_formed,
    free_port,
    nats_cluster,
    nats_users,
    wait_http_ok,
)

REPO = Path(__file__).resolve().parent.parent
CRD_PATH = REPO / "k8s" / "base" / "crd.yaml"
RBAC_PATH = REPO / "k8s" / "base" / "rbac.yaml"
SMALL_RBAC_PATH = REPO / "k8s" / "overlays" / "small" / "all-in-one.yaml"
SERVICES = ("watcher", "evaluator", "recorder", "notifier", "exporter")
ALL_IN_ONE = "allinone"  # ``python -m services.allinone`` (``certcheck all``): every service in one process
# The NATS user and ServiceAccount a process runs as, where they are not named after it.
IDENTITY = {ALL_IN_ONE: "all"}


def identity(process: str) -> str:
    return IDENTITY.get(process, process)


def service_user(service: str) -> str:
    return f"system:serviceaccount:certcheck:{identity(service)}"


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


def apply_crd(api: client.ApiClient, path: Path = CRD_PATH, timeout: float = 30) -> None:
    """Create or update every CRD of the file and wait until the API server serves them."""
    for body in yaml.safe_load_all(path.read_text()):
        if body:
            _apply_one_crd(api, body, timeout)


def _apply_one_crd(api: client.ApiClient, body: Any, timeout: float) -> None:
    ext = client.ApiextensionsV1Api(api)
    name = body["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version  # type: ignore[union-attr]
        ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        conditions = crd.status.conditions or [] if crd.status else []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            return
        time.sleep(0.1)
    raise RuntimeError(f"CRD {name} not established after {timeout}s")


@dataclass
class Stack:
    workdir: Path
    control_plane: ControlPlane = field(init=False)
    nats: NatsServer = field(init=False)  # the first node when there are several
    nats_nodes: int = 1  # 3: a JetStream cluster, every stream and bucket replicated on each node
    nats_cluster: list[NatsServer] = field(init=False)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    http_ports: dict[str, int] = field(default_factory=dict)

    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    apiserver_args: list[str] = field(default_factory=list)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)  # per service, from its first start
    all_in_one: bool = False  # start_services starts one process running every service (k8s/overlays/small)

    def __post_init__(self) -> None:
        self.control_plane = ControlPlane(self.workdir / "kube", extra_args=list(self.apiserver_args))
        # Every service connects as its own NATS user, with exactly the permissions of k8s/nats/auth.conf.
        users = nats_users()
        if self.nats_nodes > 1:
            self.nats_cluster = nats_cluster(self.workdir / "nats", self.nats_nodes, users)
        else:
            self.nats_cluster = [NatsServer(self.workdir / "nats", users=users)]
        self.nats = self.nats_cluster[0]
        # One identity per service (its ServiceAccount's user name), bound to exactly the roles in
        # k8s/base/rbac.yaml: the tests prove those roles sufficient, and the audit log tells who wrote what.
        self._tokens = {
            name: self.control_plane.add_user(service_user(name), "system:serviceaccounts")
            for name in (*SERVICES, ALL_IN_ONE)
        }

    def start_infrastructure(self) -> None:
        self.control_plane.start()
        for node in self.nats_cluster:
            node.start()
        if self.nats_nodes > 1:
            deadline = time.monotonic() + 30
            while not cluster_formed(self.nats_cluster) and time.monotonic() < deadline:
                time.sleep(0.2)
        admin = api_client(self.control_plane.kubeconfig)
        apply_crd(admin)
        utils.create_from_yaml(admin, str(RBAC_PATH))
        # The all-in-one process's identity gets the bindings k8s/overlays/small gives it.
        small = yaml.safe_load_all(SMALL_RBAC_PATH.read_text())
        utils.create_from_yaml(admin, yaml_objects=[d for d in small if d["kind"] == "ClusterRoleBinding"])
        for name, token in self._tokens.items():
            path = self.control_plane.workdir / f"kubeconfig-{name}"
            path.write_text(self.control_plane.kubeconfig_for(service_user(name), token))
            path.chmod(0o600)
            self.kubeconfigs[name] = path

    def service_env(self, name: str, instance: str | None = None) -> dict[str, str]:
        port = self.http_ports.setdefault(instance or name, free_port())
        users = self.nats.users or {}
        addresses = ",".join(node.address for node in self.nats_cluster)
        user = identity(name)
        return {
            "CERTCHECK_NATS_URL": addresses if user in users else self.nats.url,
            "CERTCHECK_STREAM_REPLICAS": str(self.nats_nodes),
            "CERTCHECK_NATS_USER": user if user in users else "",
            "CERTCHECK_NATS_PASSWORD": users.get(user, ""),
            "CERTCHECK_INSTANCE_ID": instance or name,
            "CERTCHECK_KUBECONFIG": str(self.kubeconfigs.get(name, self.control_plane.kubeconfig)),
            "CERTCHECK_HTTP_HOST": "127.0.0.1",
            "CERTCHECK_HTTP_PORT": str(port),
            "PYTHONPATH": str(REPO),
        }

    def start_service(
        self, name: str, env: dict[str, str] | None = None, wait: bool = True, instance: str | None = None
    ) -> ServiceProcess:
        """Start ``python -m services.<name>``; ``instance`` names a further replica (its own port, log)."""
        instance = instance or name
        extra_env = self.extra_env.setdefault(instance, dict(env or {}))
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        process = ServiceProcess(
            name,
            {**self.service_env(name, instance), **extra_env, **(env or {})},
            logs / f"{instance}.log",
        )
        process.start()
        self.services[instance] = process
        if wait:
            wait_http_ok(f"http://127.0.0.1:{self.http_ports[instance]}/readyz", timeout=60)
        return process

    def restart_service(self, name: str, kill: bool = True) -> ServiceProcess:
        """SIGKILL (as a crash would) or SIGTERM a service, then start it again with the settings it
        was first started with, and wait until ready."""
        process = self.services[name]
        process.kill() if kill else process.stop()
        return self.start_service(name, self.extra_env.get(name, {}))

    @property
    def processes(self) -> tuple[str, ...]:
        """The service processes ``start_services`` starts."""
        return (ALL_IN_ONE,) if self.all_in_one else SERVICES

    def process_of(self, service: str) -> str:
        """The process that runs a service (whose port serves its metrics)."""
        return ALL_IN_ONE if self.all_in_one else service

    def start_services(self, extra_env: dict[str, dict[str, str]] | None = None, wait: bool = True) -> None:
        """Every service, each its own process; or, with ``all_in_one``, one process running them all
        (``extra_env`` of every service then goes to it)."""
        if self.all_in_one:
            merged = {k: v for name in SERVICES for k, v in (extra_env or {}).get(name, {}).items()}
            self.start_service(ALL_IN_ONE, merged, wait=wait)
            return
        for name in SERVICES:
            self.start_service(name, (extra_env or {}).get(name, {}), wait=wait)

    def stop(self) -> None:
        for process in self.services.values():
            process.terminate()
        for process in self.services.values():
            process.reap(timeout=6)  # each exits within 5 s of SIGTERM
        for node in self.nats_cluster:
            node.stop()
        self.control_plane.stop()
