"""Starting and stopping etcd, kube-apiserver and nats-server as child processes on loopback."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devcluster import binaries
from devcluster.pki import write_pki
from schemas.permissions import ADMIN_USER, NATS_USERS, password_variable

NATS_AUTH_CONF = Path(__file__).resolve().parent.parent / "k8s" / "nats" / "auth.conf"


def nats_users() -> dict[str, str]:
    """A fresh random password for the admin and for every service's NATS user.

    nats-server parses an environment variable's value as a configuration token: a value starting with
    a digit or '-' is read as a number, so every password starts with a letter and is plain hex after.
    """
    return {user: "pw" + secrets.token_hex(24) for user in (ADMIN_USER, *NATS_USERS)}


DEFAULT_NATS_GOMEMLIMIT = "64MiB"
LISTEN_PORTS = (10_000, 32_768)  # below Linux's default ephemeral range


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range: a port the kernel hands out
    for outgoing connections could be taken by one (a client of the API server, say) between this
    choice and the server binding it, or while a killed server is down before it restarts."""
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(*LISTEN_PORTS)
        if ephemeral[0] <= port <= ephemeral[1]:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: object, what: str, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{tail}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s (log: {log})")


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A child in its own session (Ctrl-C reaches it only through stop()), logging to a file, that
    never outlives this process: killed however, its children go with it.

    The kernel ties PR_SET_PDEATHSIG to the thread that forks, not the process: a child started from
    another thread (a test's) would die when that thread ends, so only the main thread's get it."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    return subprocess.Popen(
        args,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent if on_main_thread else None,  # only a prctl call: fork-safe
    )


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    _signal(proc, sig)
    _reap(proc, timeout)


def _signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)


def _reap(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait for ``proc`` to exit; SIGKILL it after ``timeout``."""
    if proc is None:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Writes only, at Metadata level: enough to count who wrote what, without any Secret data.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
    resources:
      - group: ""
        resources: [secrets, events, namespaces]
      - group: certcheck.dev
        resources: [certchecks, certchecks/status]
  - level: None
"""


@dataclass
class ControlPlane:
    """etcd + kube-apiserver with RBAC, token authentication and a kubeconfig for an admin user."""

    workdir: Path
    etcd_port: int = 0
    api_port: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    extra_tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (user, groups)
    extra_args: list[str] = field(default_factory=list)  # more kube-apiserver flags
    etcd: subprocess.Popen[bytes] | None = None
    apiserver: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        """Every write (create, update, patch, delete) the API server accepted, one JSON line each."""
        return self.workdir / "audit.log"

    def add_user(self, user: str, groups: str) -> str:
        """A token for a user (before start): lets tests tell who wrote what in the audit log."""
        token = secrets.token_hex(16)
        self.extra_tokens[token] = (user, groups)
        return token

    def start(self) -> None:
        bin_dir = binaries.control_plane_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = write_pki(self.workdir / "pki")
        self.etcd_port = self.etcd_port or free_port()
        self.api_port = self.api_port or free_port()
        self._start_etcd(bin_dir)
        self._start_apiserver(bin_dir, pki)
        self._write_kubeconfig(pki["ca.crt"])

    def _start_etcd(self, bin_dir: Path) -> None:
        log = self.workdir / "etcd.log"
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = _spawn(
            [
                str(bin_dir / "etcd"),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            log,
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as response:
                    return b"true" in bytes(response.read())
            except OSError:
                return False

        _wait(healthy, "etcd", 30, self.etcd, log)

    def _start_apiserver(self, bin_dir: Path, pki: dict[str, Path]) -> None:
        tokens = self.workdir / "tokens.csv"
        lines = [f'{self.admin_token},admin,admin,"system:masters"']
        lines += [f'{token},{user},{user},"{groups}"' for token, (user, groups) in self.extra_tokens.items()]
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)
        log = self.workdir / "kube-apiserver.log"
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(AUDIT_POLICY)
        self.apiserver = _spawn(
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki['server.crt']}",
                f"--tls-private-key-file={pki['server.key']}",
                f"--client-ca-file={pki['ca.crt']}",
                f"--token-auth-file={tokens}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki['sa.pub']}",
                f"--service-account-signing-key-file={pki['sa.key']}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                *self.extra_args,
                "--v=0",
            ],
            log,
        )
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))

        def ready() -> bool:
            request = urllib.request.Request(
                f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        _wait(ready, "kube-apiserver", 90, self.apiserver, log)

    def _write_kubeconfig(self, ca: Path) -> None:
        self.kubeconfig.write_text(self.kubeconfig_for("admin", self.admin_token, ca))
        self.kubeconfig.chmod(0o600)

    def kubeconfig_for(self, user: str, token: str, ca: Path | None = None) -> str:
        ca_data = base64.b64encode((ca or self.workdir / "pki" / "ca.crt").read_bytes()).decode()
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "certcheck-dev",
                "clusters": [
                    {
                        "name": "certcheck-dev",
                        "cluster": {"server": self.url, "certificate-authority-data": ca_data},
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [
                    {"name": "certcheck-dev", "context": {"cluster": "certcheck-dev", "user": user}}
                ],
            }
        )

    def compact_etcd(self) -> int:
        """Compact etcd's history up to now, as the API server does every 5 minutes; returns the revision."""
        url = f"http://127.0.0.1:{self.etcd_port}/v3/kv/range"
        request = urllib.request.Request(url, data=b'{"key": "AA=="}', method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            revision = int(json.loads(response.read())["header"]["revision"])
        compaction = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}/v3/kv/compaction",
            data=json.dumps({"revision": revision, "physical": True}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(compaction, timeout=10):
            return revision

    def stop(self) -> None:
        _stop(self.apiserver)
        _stop(self.etcd)


@dataclass
class NatsServer:
    workdir: Path
    port: int = 0
    monitor_port: int = 0
    binary: Path | None = None  # default: the nats-server of this environment
    proc: subprocess.Popen[bytes] | None = None
    # user -> password: run with the shipped k8s/nats/auth.conf (one user per service, and the admin)
    users: dict[str, str] | None = None
    server_name: str = "certcheck-dev"
    extra_args: list[str] = field(default_factory=list)  # e.g. --cluster and --routes

    @property
    def address(self) -> str:
        """The server's URL without credentials (services connect with their own user)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL tools and tests use: with the admin's credentials when the server has users."""
        if self.users:
            return f"nats://{ADMIN_USER}:{self.users[ADMIN_USER]}@127.0.0.1:{self.port}"
        return self.address

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        log = self.workdir / "nats-server.log"
        self.proc = _spawn(
            [
                str(self.binary or binaries.nats_server()),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-js",
                "-sd",
                str(self.workdir / "jetstream"),
                "--server_name",
                self.server_name,
                *self.extra_args,
                *(["-c", str(NATS_AUTH_CONF)] if self.users else []),
            ],
            log,
            env=self._env(),
        )

        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        _wait(healthy, "nats-server", 30, self.proc, log)

    def _env(self) -> dict[str, str]:
        # The Go runtime's soft memory limit (CERTCHECK_NATS_GOMEMLIMIT, empty for none): the heap
        # stays near what the server uses instead of growing to twice that (at 10,000 certificates
        # 80 MiB RSS instead of ~150).
        limit = os.environ.get("CERTCHECK_NATS_GOMEMLIMIT", DEFAULT_NATS_GOMEMLIMIT)
        env = {**os.environ, **({"GOMEMLIMIT": limit} if limit else {})}
        return env | {password_variable(u): p for u, p in (self.users or {}).items()}

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        _stop(self.proc, signal.SIGKILL)


def nats_cluster(workdir: Path, size: int, users: dict[str, str] | None = None) -> list[NatsServer]:
    """``size`` nats-servers routed into one JetStream cluster on loopback (not started)."""
    route_ports = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    return [
        NatsServer(
            workdir / f"nats-{index}",
            users=users,
            server_name=f"nats-{index}",
            extra_args=[
                "--cluster_name",
                "certcheck",
                "--cluster",
                f"nats://127.0.0.1:{port}",
                "--routes",
                routes,
            ],
        )
        for index, port in enumerate(route_ports)
    ]


def cluster_formed(servers: list[NatsServer]) -> bool:
    """Every node agrees on one meta leader, and that leader sees every other node as current: only then
    does creating a stream replicated on all of them answer at once (before, it may time out)."""
    views = [_meta_cluster(server) for server in servers]
    leaders = {view.get("leader") for view in views}
    if len(leaders) != 1 or None in leaders:
        return False
    leader_view = next((v for s, v in zip(servers, views, strict=True) if s.server_name in leaders), None)
    peers = (leader_view or {}).get("replicas") or []
    return len(peers) == len(servers) - 1 and all(peer.get("current") for peer in peers)


def _meta_cluster(server: NatsServer) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/jsz", timeout=2) as response:
            return dict(json.load(response).get("meta_cluster") or {})
    except (OSError, ValueError):
        return {}


def meta_leader(server: NatsServer) -> str | None:
    """The JetStream meta leader a cluster node knows of (None while there is none)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/jsz", timeout=2) as response:
            leader = json.load(response).get("meta_cluster", {}).get("leader")
    except OSError:
        return None
    return str(leader) if leader else None


@dataclass
class ServiceProcess:
    """One certcheck service as a child process (``python -m services.<name>``)."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = _spawn(
            [os.environ.get("CERTCHECK_PYTHON", sys.executable), "-m", f"services.{self.name}"],
            self.log_path,
            env={**os.environ, **self.env},
        )

    def stop(self) -> None:
        _stop(self.proc)

    def terminate(self) -> None:
        """SIGTERM without waiting (``reap`` waits): services stop side by side."""
        _signal(self.proc, signal.SIGTERM)

    def reap(self, timeout: float = 10) -> None:
        _reap(self.proc, timeout)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_http_ok(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")
