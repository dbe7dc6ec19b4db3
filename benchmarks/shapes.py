"""Workload shapes on a real control plane, every figure set against a floor measured in the same run.
Prints; asserts nothing.

    python -m benchmarks.shapes [--shapes spread,dense,few] [--scale 1.0] [--rate 20] [--duration 20]
                                [--sweep 50,100,200,400] [--sweep-duration 10] [--sweep-p99 1000]

Run it from the repository root (``make bench`` does). Absolute times vary 2x from one day to the next on
the same machine, so each shape is compared with what the API server alone costs, measured in the run:

floor   A Stack of etcd, kube-apiserver and nats-server only (no certcheck service). It creates as many
        TLS Secrets as a shape has certificates, then times that many annotation merge patches sent as
        the recorder sends them (its KubeWriter, as many at once as its write concurrency), then single
        patches at the change rate: each round trip, and until a watch shows the patched value.
shapes  Each on a fresh Stack, 10,000 certificates at --scale 1 (--scale multiplies the Secrets per
        CertCheck; each TLS Secret holds one certificate, spread over Expired, ExpiringSoon and Valid):
        spread  10 namespaces x 10 CertChecks x 100 Secrets, matchLabels selectors (as startup.py)
        dense   4 namespaces x 25 CertChecks x 100 Secrets, every other selector a matchExpressions,
                plus 10% noise: unselected TLS Secrets, and selected Opaque Secrets holding no certificate
        few     1 namespace x 2 CertChecks x 5,000 Secrets
        wide    100 namespaces x 10 CertChecks x 10 Secrets (not by default: with --evaluators 4, how
                evenly a fleet's namespaces spread over the replicas)

For each shape:
1. Cold start: the objects exist, then the services start; until every selected Secret carries its
   annotations and every CertCheck's status counts all its Secrets and certificates. Against the floor
   for as many annotation writes; the services' CPU per certificate; the peak RSS of the services and
   nats-server; API requests per certificate (the kube-apiserver's apiserver_request_total, less the
   benchmark's own requests), and the writes certcheck's users made (from the API server's audit log).
2. Open-loop changes: certificates replaced at --rate per second for --duration seconds, each sent on
   schedule whatever the earlier ones are doing. Per change, from its scheduled moment until the Secret's
   certcheck.dev/not-after annotation, the CertCheck's status entry and the Secret's Warning Event (for
   every fourth change, an ExpiringSoon one) show it; one watch per kind sees them all.
   With --sweep, then the highest rate of changes the services sustain without their latency growing:
   once quiet, one open-loop batch per rate, lowest first, each for --sweep-duration seconds and planned
   as the others (every change a notAfter of its own), waiting for quiet after each. A rate is sustained
   when every change's annotation was seen, with a p99 of at most --sweep-p99 ms and at most 3x the
   lowest rate's; the sweep stops at the first rate that is not. The floor runs the same rates with
   the API server alone, each change the data patch and at once the annotation patch a recorder would
   send: the most certcheck could sustain on the same machine.
3. Quiet restart: every service stopped and started again; the Kubernetes writes in the 10 s after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import urllib3
from kubernetes import client
from nats.aio.msg import Msg

from benchmarks import measure
from benchmarks.measure import cpu_seconds, metric, metric_by_label, peak_rss_mib, wait_quiet
from devcluster.certs import make_cert, tls_secret_data
from devcluster.stack import Stack, api_client
from schemas import annotations as ann
from schemas import messages, subjects
from schemas.messages import AnnotationPatch, State
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, MERGE_PATCH
from services.common.kube_writer import KubeWriter
from services.common.settings import Settings
from services.domain.states import URGENCY
from services.domain.times import rfc3339
from services.evaluator.events import transition_reason

THRESHOLD_DAYS = 30
CERTCHECKS = f"/apis/{CERTCHECK_GROUP}/{CERTCHECK_VERSION}/{CERTCHECK_PLURAL}"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
SERVICE_USER = "system:serviceaccount:certcheck:"
EFFECTS = ("annotation", "status", "event")
CHANGE_THREADS = 16


@dataclass(frozen=True)
class Shape:
    name: str
    namespaces: int
    checks: int  # per namespace
    per_check: int  # TLS Secrets (one certificate each) per CertCheck
    expressions: bool = False  # every other selector written as matchExpressions
    noise: float = 0.0  # more Secrets, a share of the certificates: half unselected TLS, half selected Opaque

    @property
    def certificates(self) -> int:
        return self.namespaces * self.checks * self.per_check


SHAPES = {
    "spread": Shape("spread", 10, 10, 100),
    "dense": Shape("dense", 4, 25, 100, expressions=True, noise=0.1),
    "few": Shape("few", 1, 2, 5000),
    # Not run by default: the fleet shape, for --evaluators (how evenly 100 namespaces spread).
    "wide": Shape("wide", 100, 10, 10),
}
DEFAULT_SHAPES = ("spread", "dense", "few")


# --- what a shape creates, and what the services are to make of it --------------------------------


@dataclass
class SecretPlan:
    namespace: str
    name: str
    labels: dict[str, str]
    check: str | None  # the CertCheck that selects it
    not_after: datetime | None  # None: an Opaque Secret holding no certificate
    order: tuple[int, ...] = ()  # changes go through the Secrets in this order
    uid: str = ""

    @property
    def annotated(self) -> str:
        """The annotation that shows the Secret recorded: its notAfter, or the state Invalid."""
        return rfc3339(self.not_after) if self.not_after else State.INVALID.value


@dataclass
class CheckPlan:
    namespace: str
    name: str
    selector: dict[str, Any]
    secrets: int
    certs: int


@dataclass
class Plan:
    namespaces: list[str] = field(default_factory=list)
    checks: list[CheckPlan] = field(default_factory=list)
    secrets: list[SecretPlan] = field(default_factory=list)

    @property
    def selected(self) -> list[SecretPlan]:
        return [s for s in self.secrets if s.check]

    @property
    def certificates(self) -> int:
        return sum(1 for s in self.selected if s.not_after)


def scaled(shape: Shape, scale: float) -> Shape:
    return replace(shape, per_check=max(1, round(shape.per_check * scale)))


def expiry(now: datetime, index: int) -> datetime:
    """notAfter from 10 days ago to 389 days ahead: about 2.5% Expired, 7.5% ExpiringSoon, 90% Valid.
    Half a day past a whole number of days, so no status's daysRemaining changes while the run lasts."""
    return (now + timedelta(days=(index * 7) % 400 - 10, hours=12)).replace(microsecond=0)


def state_of(not_after: datetime, now: datetime) -> str:
    if now > not_after:
        return State.EXPIRED.value
    if not_after - now <= timedelta(days=THRESHOLD_DAYS):
        return State.EXPIRING_SOON.value
    return State.VALID.value


def selector(shape: Shape, check: int) -> dict[str, Any]:
    group = f"g{check}"
    if shape.expressions and check % 2:
        return {"matchExpressions": [{"key": "group", "operator": "In", "values": [group]}]}
    return {"matchLabels": {"group": group}}


def plan_shape(shape: Shape, now: datetime) -> Plan:
    plan = Plan()
    for n in range(shape.namespaces):
        ns = f"{shape.name}-{n}"
        plan.namespaces.append(ns)
        checks = [
            CheckPlan(ns, f"check-{c}", selector(shape, c), shape.per_check, shape.per_check)
            for c in range(shape.checks)
        ]
        plan.checks += checks
        for c in range(shape.checks):
            for s in range(shape.per_check):
                when = expiry(now, len(plan.secrets))
                plan.secrets.append(SecretPlan(ns, f"cert-{c}-{s}", {"group": f"g{c}"}, f"check-{c}", when))
                plan.secrets[-1].order = (s, c, n)
        plan.secrets += noise(shape, checks, now)
    return plan


def noise(shape: Shape, checks: list[CheckPlan], now: datetime) -> list[SecretPlan]:
    """Half unselected TLS Secrets with certificates, half selected Opaque Secrets holding none."""
    count = round(shape.checks * shape.per_check * shape.noise)
    secrets = []
    for i in range(count):
        ns = checks[0].namespace
        if i % 2 == 0:
            secrets.append(SecretPlan(ns, f"noise-tls-{i}", {"group": "unwatched"}, None, expiry(now, i)))
            continue
        check = checks[(i // 2) % len(checks)]
        check.secrets += 1
        labels = {"group": check.name.replace("check-", "g")}
        secrets.append(SecretPlan(ns, f"noise-opaque-{i}", labels, check.name, None))
    return secrets


def floor_plan(certificates: int, now: datetime) -> Plan:
    plan = Plan(namespaces=["floor-0"])
    for i in range(certificates):
        plan.secrets.append(SecretPlan("floor-0", f"cert-{i}", {}, None, expiry(now, i), order=(i,)))
    return plan


# --- the API server -------------------------------------------------------------------------------


class Api:
    """Requests to the kube-apiserver as its admin, through the Kubernetes client's pool and token."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = api_client(stack.control_plane.kubeconfig)
        self.core = client.CoreV1Api(self.client)
        self.sent = 0  # by request() and get_json(): the benchmark's own requests
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": accept, "Content-Type": content_type}
        self.client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        with self._lock:
            self.sent += 1
        response: urllib3.BaseHTTPResponse = self.client.rest_client.pool_manager.request(
            method,
            self.client.configuration.host + path,
            body=None if body is None else json.dumps(body).encode(),
            headers=headers,
            preload_content=not stream,
            timeout=urllib3.Timeout(connect=10, read=None if stream else 60),
        )
        return response

    def get_json(self, path: str, accept: str = "application/json") -> Any:
        response = self.request("GET", path, accept=accept)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {response.data[:200]!r}")
        return json.loads(response.data)

    def requests_by_verb(self) -> Counter[str]:
        """apiserver_request_total by verb, for clients only: the API server's own loopback requests are
        the protobuf ones (a watch counts when it ends; scraping /metrics itself does not count)."""
        text = self.request("GET", "/metrics", accept="text/plain").data.decode()
        with self._lock:
            self.sent -= 1
        totals: Counter[str] = Counter()
        for line in text.splitlines():
            if line.startswith("apiserver_request_total{") and 'component="apiserver"' in line:
                verb = re.search(r'verb="(\w+)"', line)
                if verb and "protobuf" not in line:
                    totals[verb.group(1)] += int(float(line.rsplit(" ", 1)[1]))
        return totals


def audit_offset(stack: Stack) -> int:
    path = stack.control_plane.audit_log
    return path.stat().st_size if path.exists() else 0


def audit_writes(stack: Stack, offset: int) -> Counter[tuple[str, str]]:
    """The writes certcheck's services made since ``offset``, from the audit log (it logs every write),
    by (service, "verb resource[/subresource]")."""
    writes: Counter[tuple[str, str]] = Counter()
    with stack.control_plane.audit_log.open("rb") as log:
        log.seek(offset)
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:  # a line the API server is still writing (or rotated mid-way): not counted
                continue
            user = entry.get("user", {}).get("username", "")
            if user.startswith(SERVICE_USER) and entry.get("stage") == "ResponseComplete":
                ref = entry.get("objectRef") or {}
                what = "/".join(p for p in (ref.get("resource"), ref.get("subresource")) if p)
                writes[user.removeprefix(SERVICE_USER), f"{entry.get('verb')} {what}"] += 1
    return writes


def summed(counts: Counter[tuple[str, str]], by: int) -> str:
    """Audited writes added up by service (by=0) or by kind of write (by=1)."""
    total: Counter[str] = Counter()
    for key, count in counts.items():
        total[key[by]] += count
    return ", ".join(f"{name} {count}" for name, count in sorted(total.items())) or "none"


class Machine:
    """What else ran on the cores in a window, slowing everything measured meanwhile: the CPU other
    processes spent (the machine's user and system time less this run's processes'), and the time the
    hypervisor gave this VM's CPUs to others (steal). Interrupt time, mostly loopback traffic, is left out."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.busy, self.steal, self.ours = *self._stat(), self._ours()

    @staticmethod
    def _stat() -> tuple[float, float]:
        fields = [int(f) for f in Path("/proc/stat").read_text().split()[1:9]]
        user, nice, system, steal, tick = fields[0], fields[1], fields[2], fields[7], os.sysconf("SC_CLK_TCK")
        return (user + nice + system) / tick, steal / tick

    def _ours(self) -> float:
        cp = self.stack.control_plane
        services = [s.proc for s in self.stack.services.values() if s.running]
        procs = [cp.apiserver, cp.etcd, *(n.proc for n in self.stack.nats_cluster), *services]
        return sum(cpu_seconds(pid) for pid in [p.pid for p in procs if p is not None] + [os.getpid()])

    def foreign(self) -> tuple[float, float]:
        """(CPU seconds of other processes, seconds stolen) since this was made."""
        busy, steal = self._stat()
        return max(0.0, busy - self.busy - (self._ours() - self.ours)), steal - self.steal


def secret_body(secret: SecretPlan) -> client.V1Secret:
    meta = client.V1ObjectMeta(name=secret.name, labels=secret.labels)
    if secret.not_after is None:
        data: dict[str, bytes | str] = {"password": base64.b64encode(b"not a certificate").decode()}
        return client.V1Secret(metadata=meta, type="Opaque", data=data)
    cert, key = make_cert(f"{secret.name}.{secret.namespace}.test", secret.not_after)
    return client.V1Secret(metadata=meta, type="kubernetes.io/tls", data=tls_secret_data(cert, key))


def create_objects(api: Api, plan: Plan) -> float:
    """Namespaces, CertChecks and Secrets (remembering their uids); returns the seconds taken."""
    started = time.monotonic()
    custom = client.CustomObjectsApi(api.client)
    for ns in plan.namespaces:
        api.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    for check in plan.checks:
        body = {
            "apiVersion": f"{CERTCHECK_GROUP}/{CERTCHECK_VERSION}",
            "kind": "CertCheck",
            "metadata": {"name": check.name},
            "spec": {"selector": check.selector, "threshold": THRESHOLD_DAYS},
        }
        custom.create_namespaced_custom_object(
            CERTCHECK_GROUP, CERTCHECK_VERSION, check.namespace, CERTCHECK_PLURAL, body
        )

    def create(secret: SecretPlan) -> None:
        created = api.core.create_namespaced_secret(secret.namespace, secret_body(secret))
        secret.uid = getattr(created.metadata, "uid", "") or ""

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, plan.secrets))
    return time.monotonic() - started


# --- cold start -----------------------------------------------------------------------------------


@dataclass
class ColdStart:
    seconds: float
    cpu: dict[str, float]  # seconds, per service
    rss: dict[str, float]  # peak MiB, per service and nats-server
    requests: Counter[str]  # by verb, the benchmark's own LISTs taken out
    own_requests: int
    audit: Counter[tuple[str, str]]  # writes by (service, kind)
    writes: dict[str, float]  # the recorder's certcheck_kubernetes_writes_total by kind
    ready: Readiness
    foreign_cpu: tuple[float, float]  # Machine.foreign() meanwhile
    # With --evaluators N: per evaluator replica, (partitions held, Secrets in its views).
    shares: dict[str, tuple[int, int]] = field(default_factory=dict)
    # What the pipeline did meanwhile: evaluations by trigger, results by how the recorder took them,
    # bus messages per connection (bus_traffic()).
    work: Counter[str] = field(default_factory=Counter)
    traffic: Counter[str] = field(default_factory=Counter)


NATS = "nats-server"


def pids(stack: Stack) -> dict[str, int]:
    """Every certcheck process (each replica by its instance name) and nats-server."""
    found = {name: service.proc for name, service in stack.services.items()}
    found[NATS] = stack.nats.proc
    return {name: proc.pid for name, proc in found.items() if proc is not None}


JS_API = "JetStream API requests"
NATS_CPU_MS = "nats-server CPU ms"


def _monitored(stack: Stack, endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.nats.monitor_port}/{endpoint}", timeout=5
    ) as response:
        found: dict[str, Any] = json.load(response)
        return found


def bus_traffic(stack: Stack) -> Counter[str]:
    """What nats-server counted per connection name so far: messages it took from each ("<name> in":
    publishes, acknowledgements, requests) and gave to each ("<name> out": deliveries, replies); and
    the JetStream API requests it answered (stream and consumer info, message gets: each far dearer to
    it than a publish) and the CPU it used."""
    counted: Counter[str] = Counter()
    for connection in _monitored(stack, "connz?limit=4096").get("connections") or []:
        name = connection.get("name") or "unnamed"
        counted[f"{name} in"] += connection.get("in_msgs", 0)
        counted[f"{name} out"] += connection.get("out_msgs", 0)
    counted[JS_API] = _monitored(stack, "jsz").get("api", {}).get("total", 0)
    if stack.nats.proc is not None:
        counted[NATS_CPU_MS] = round(cpu_seconds(stack.nats.proc.pid) * 1000)
    return counted


def service_cpu(stack: Stack) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids(stack).items() if name != NATS}


def cpu_by_part(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of certcheck's services, nats-server, the API server with etcd, and this
    benchmark (its writes and watches): where the cores go."""
    cp = stack.control_plane
    control = sum(cpu_seconds(p.pid) for p in (cp.apiserver, cp.etcd) if p is not None)
    return {
        "certcheck": sum(service_cpu(stack).values()),
        NATS: cpu_seconds(stack.nats.proc.pid) if stack.nats.proc is not None else 0.0,
        "API server+etcd": control,
        "benchmark": time.process_time(),
    }


def evaluations(stack: Stack, evaluators: int) -> tuple[float, float]:
    """How many CertCheck evaluations the evaluators ran so far, and the seconds they took in all."""
    instances = evaluator_instances(evaluators)
    return (
        sum(metric(stack, i, "certcheck_evaluation_duration_seconds_count") for i in instances),
        sum(metric(stack, i, "certcheck_evaluation_duration_seconds_sum") for i in instances),
    )


def evaluator_instances(evaluators: int) -> list[str]:
    """The evaluator replicas a run starts: "evaluator", then "evaluator-2" and on."""
    return ["evaluator", *(f"evaluator-{i}" for i in range(2, evaluators + 1))]


def evaluator_shares(stack: Stack, evaluators: int) -> dict[str, tuple[int, int]]:
    if evaluators < 2:
        return {}
    return {
        instance: (
            int(metric(stack, instance, "certcheck_partitions_owned", 'group="evaluator"')),
            int(metric(stack, instance, "certcheck_view_objects", 'kind="secret"')),
        )
        for instance in evaluator_instances(evaluators)
    }


class Profiles:
    """With --profile DIR, py-spy samples every certcheck process (the thread holding the GIL) while a
    phase runs: one collapsed stack file per process and phase (flamegraph.pl or speedscope read
    them). Off: does nothing."""

    def __init__(self, directory: Path | None, shape: str) -> None:
        self.directory, self.shape = directory, shape

    @contextlib.contextmanager
    def phase(self, stack: Stack, name: str) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = str(Path(sys.executable).with_name("py-spy"))
        recorders = [
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--gil",  # the threads holding the GIL: the CPU Python spends, not its waiting
                    "--output",
                    str(self.directory / f"{self.shape}-{name}-{service}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for service, pid in pids(stack).items()
            if service != NATS
        ]
        try:
            yield
        finally:
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            for recorder in recorders:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    recorder.wait(timeout=30)


def is_recorded(api: Api, plan: Plan) -> bool:
    """Every CertCheck's status counts all its Secrets and certificates, and every selected Secret
    carries its annotation (a status written from a view still filling up does not count)."""
    items = api.get_json(CERTCHECKS)["items"]
    statuses = {(c["metadata"]["namespace"], c["metadata"]["name"]): c.get("status") or {} for c in items}
    for check in plan.checks:
        status = statuses.get((check.namespace, check.name), {})
        if (status.get("targetSecretsCount"), status.get("targetCertsCount")) != (check.secrets, check.certs):
            return False
    listed = api.get_json("/api/v1/secrets", accept=METADATA_LIST)["items"]
    annotations = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m["metadata"].get("annotations") or {}
        for m in listed
    }
    for secret in plan.selected:
        found = annotations.get((secret.namespace, secret.name), {})
        if found.get(ann.NOT_AFTER if secret.not_after else ann.STATE) != secret.annotated:
            return False
    return True


class Readiness:
    """When every service first answered /readyz, and the CPU they had used by then (interpreter start,
    imports, connections: what a small shape mostly measures)."""

    def __init__(self, stack: Stack) -> None:
        self.stack, self.started, self.waiting = stack, time.monotonic(), set(stack.services)
        self.seconds = self.cpu = math.nan

    def poll(self) -> None:
        for name in list(self.waiting):
            with contextlib.suppress(OSError):
                port = self.stack.http_ports[name]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        self.waiting.discard(name)
        if not self.waiting and math.isnan(self.seconds):
            self.seconds = time.monotonic() - self.started
            self.cpu = sum(service_cpu(self.stack).values())


def wait_recorded(stack: Stack, api: Api, plan: Plan, readiness: Readiness, timeout: float) -> float:
    """Seconds until is_recorded, listing only once the recorder counts enough writes (or every 5 s)."""
    started = listed = time.monotonic()
    while time.monotonic() - started < timeout:
        readiness.poll()
        annotations = metric(
            stack, "recorder", "certcheck_kubernetes_writes_total", 'kind="annotations",outcome="ok"'
        )
        statuses = metric(
            stack, "recorder", "certcheck_kubernetes_writes_total", 'kind="status",outcome="ok"'
        )
        enough = annotations >= len(plan.selected) and statuses >= len(plan.checks)
        if enough or time.monotonic() - listed > 5:
            listed = time.monotonic()
            if is_recorded(api, plan):
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"not everything was recorded after {timeout}s")


def cold_start(
    stack: Stack,
    api: Api,
    plan: Plan,
    env: dict[str, dict[str, str]],
    timeout: float,
    profiles: Profiles,
    evaluators: int = 1,
) -> ColdStart:
    before, offset, own, machine = api.requests_by_verb(), audit_offset(stack), api.sent, Machine(stack)
    stack.start_services(env, wait=False)
    for instance in evaluator_instances(evaluators)[1:]:
        stack.start_service("evaluator", env.get("evaluator", {}), wait=False, instance=instance)
    ready = Readiness(stack)
    with profiles.phase(stack, "cold"):
        seconds = wait_recorded(stack, api, plan, ready, timeout)
    cpu, foreign = service_cpu(stack), machine.foreign()
    rss = {name: peak_rss_mib(pid) for name, pid in pids(stack).items()}
    own = api.sent - own
    requests = api.requests_by_verb() - before
    requests["LIST"] -= own  # is_recorded's, the only requests the benchmark makes meanwhile
    writes = {
        kind: metric(stack, "recorder", "certcheck_kubernetes_writes_total", f'kind="{kind}",outcome="ok"')
        for kind in ("annotations", "status", "event")
    }
    cold = ColdStart(seconds, cpu, rss, requests, own, audit_writes(stack, offset), writes, ready, foreign)
    cold.shares = evaluator_shares(stack, evaluators)
    cold.work, cold.traffic = work_done(stack, evaluators), bus_traffic(stack)
    return cold


def work_done(stack: Stack, evaluators: int) -> Counter[str]:
    """Evaluations by trigger (every replica's) and results by kind and outcome, counted so far."""
    done: Counter[str] = Counter()
    for instance in evaluator_instances(evaluators):
        for labels, count in metric_by_label(stack, instance, "certcheck_evaluations_total").items():
            done["evaluated " + labels.removeprefix('trigger="').rstrip('"')] += int(count)
    results = metric_by_label(stack, "recorder", "certcheck_recorder_results_total")
    for labels, count in results.items():
        fields = dict(part.split("=", 1) for part in labels.split(","))
        done[f"{fields['kind'].strip(chr(34))} {fields['outcome'].strip(chr(34))}"] += int(count)
    return done


# --- open-loop changes ----------------------------------------------------------------------------


@dataclass
class Change:
    secret: SecretPlan
    not_after: datetime
    due: tuple[str, ...]  # the effects to see, of EFFECTS
    reason: str | None = None  # the Event due on the Secret
    data: dict[str, Any] = field(default_factory=dict)  # the new tls.crt and tls.key
    scheduled: float = 0.0
    sent: float = 0.0
    answered: float = 0.0
    error: str = ""
    seen: dict[str, float] = field(default_factory=dict)  # effect -> when

    @property
    def value(self) -> str:
        return rfc3339(self.not_after)


# Other changes to the same CertCheck still in flight may push an entry out of a capped status list: a
# change is looked for there only if it lands this far inside the cap.
STATUS_MARGIN = 2


def status_order(not_after: datetime | None, now: datetime) -> tuple[int, datetime]:
    """Where a Secret's certificate sorts in its CertCheck's status list (most urgent first); an Opaque
    Secret without one as an Invalid entry."""
    if not_after is None:
        return URGENCY[State.INVALID], datetime.max.replace(tzinfo=UTC)
    return URGENCY[State(state_of(not_after, now))], not_after


def plan_changes(plan: Plan, count: int, status_cap: int, now: datetime, first: int = 0) -> list[Change]:
    """Every fourth change a certificate expiring within the threshold (a Warning Event), the others a
    renewal (a Normal Renewed). A status lists its ``status_cap`` most urgent certificates: a change is
    looked for there only where the CertCheck has no more, or where it lands well inside them. Changes
    planned after others go on from index ``first`` (how many came before): each notAfter, ``i``
    seconds past a later moment, is new."""
    targets = sorted((s for s in plan.selected if s.not_after), key=lambda s: s.order)
    current = {
        (s.namespace, s.name): (state_of(s.not_after, now), s.annotated) for s in targets if s.not_after
    }
    order = {(s.namespace, s.name): status_order(s.not_after, now) for s in plan.selected}
    members: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for s in plan.selected:
        members.setdefault((s.namespace, s.check or ""), []).append((s.namespace, s.name))
    changes = []
    for i in range(first, first + count):
        secret = targets[i % len(targets)]
        days = 10 + i % 15 if i % 4 == 3 else 400 + i % 50
        not_after = (now + timedelta(days=days, hours=12, seconds=i)).replace(microsecond=0)
        key = (secret.namespace, secret.name)
        old_state, old_value = current[key]
        new_state = state_of(not_after, now)
        reason = transition_reason(old_state, new_state, old_value, rfc3339(not_after))
        current[key] = (new_state, rfc3339(not_after))
        order[key] = status_order(not_after, now)
        peers = members[(secret.namespace, secret.check or "")]
        rank = sum(1 for peer in peers if order[peer] < order[key])
        listed = len(peers) <= status_cap or rank < status_cap - STATUS_MARGIN
        # A Normal Secret Event may be held back (the recorder's per-namespace budget for a mass
        # rotation, summarised on the CertCheck): only the Warnings are certain, so only they are timed.
        warning = reason in (State.EXPIRING_SOON.value, State.EXPIRED.value, State.INVALID.value)
        due = ("annotation", *(["status"] if listed else []), *(["event"] if warning else []))
        cert, pem_key = make_cert(f"{secret.name}.renewed-{i}", not_after)
        changes.append(Change(secret, not_after, due, reason, tls_secret_data(cert, pem_key)))
    return changes


class Tracker:
    """The changes still waiting for an effect, by (effect, namespace, Secret or CertCheck name)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str, str], list[Change]] = {}
        self._lock = threading.Lock()

    def expect(self, change: Change) -> None:
        with self._lock:
            for effect in change.due:
                name = change.secret.check if effect == "status" else change.secret.name
                key = (effect, change.secret.namespace, name or "")
                self._pending.setdefault(key, []).append(change)

    def saw(self, effect: str, namespace: str, name: str, matches: Callable[[Change], bool]) -> None:
        now = time.monotonic()
        with self._lock:
            waiting = self._pending.get((effect, namespace, name), [])
            for change in [c for c in waiting if matches(c)]:
                change.seen[effect] = now
                waiting.remove(change)

    def on_secret(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        value = (meta.get("annotations") or {}).get(ann.NOT_AFTER)
        if value:
            self.saw("annotation", meta["namespace"], meta["name"], lambda c: c.value == value)

    def on_certcheck(self, obj: dict[str, Any]) -> None:
        meta, entries = obj["metadata"], (obj.get("status") or {}).get("certificates") or []
        after = {e["name"]: e.get("notAfter") for e in entries if e.get("kind", "Secret") == "Secret"}
        self.saw("status", meta["namespace"], meta["name"], lambda c: after.get(c.secret.name) == c.value)

    def on_event(self, obj: dict[str, Any]) -> None:
        involved, message, reason = (
            obj.get("involvedObject") or {},
            obj.get("message") or "",
            obj.get("reason"),
        )
        if involved.get("kind") == "Secret":
            self.saw(
                "event",
                involved.get("namespace", ""),
                involved.get("name", ""),
                lambda c: c.reason == reason and c.value in message,
            )


def lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.read_chunked():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line)


class Watch(threading.Thread):
    """One watch of a kind in every namespace, from now on, handing each object to ``handle``."""

    def __init__(self, api: Api, path: str, handle: Callable[[dict[str, Any]], None], accept: str) -> None:
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.handle, self.accept = api, path, handle, accept
        self.resource_version = self._now()
        self.stopping = threading.Event()
        self.restarts = 0
        self._response: urllib3.BaseHTTPResponse | None = None

    def _now(self) -> str:
        listed = self.api.get_json(f"{self.path}?limit=1")
        return str(listed["metadata"]["resourceVersion"])

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._stream()
            except Exception:
                if self.stopping.is_set():
                    return
                self.restarts += 1
                time.sleep(0.2)

    def _stream(self) -> None:
        query = (
            f"?watch=1&allowWatchBookmarks=true&timeoutSeconds=600&resourceVersion={self.resource_version}"
        )
        self._response = response = self.api.request(
            "GET", self.path + query, accept=self.accept, stream=True
        )
        for line in lines(response):
            event = json.loads(line)
            if event["type"] == "ERROR":  # 410 Gone: from now on (what came between is missed)
                self.resource_version, self.restarts = self._now(), self.restarts + 1
                return
            self.resource_version = event["object"]["metadata"]["resourceVersion"]
            if event["type"] in ("ADDED", "MODIFIED"):
                self.handle(event["object"])

    def stop(self) -> None:
        self.stopping.set()
        if self._response is not None:
            self._response.shutdown()


def watches(api: Api, tracker: Tracker, effects: set[str]) -> list[Watch]:
    kinds = {
        "annotation": ("/api/v1/secrets", tracker.on_secret, METADATA),
        "status": (CERTCHECKS, tracker.on_certcheck, "application/json"),
        "event": ("/api/v1/events", tracker.on_event, "application/json"),
    }
    started = [Watch(api, *kinds[effect]) for effect in EFFECTS if effect in effects]
    for watch in started:
        watch.start()
    return started


def open_loop(changes: list[Change], rate: float, send: Callable[[Change], None], tracker: Tracker) -> None:
    """Send each change at its moment on a pool, whether or not the earlier ones were answered."""

    def timed(change: Change) -> None:
        change.sent = time.monotonic()
        try:
            send(change)
        except Exception as exc:
            change.error = str(exc)[:200]
        change.answered = time.monotonic()

    start = time.monotonic() + 0.2
    with ThreadPoolExecutor(CHANGE_THREADS, thread_name_prefix="change") as pool:
        for i, change in enumerate(changes):
            change.scheduled = start + i / rate
            time.sleep(max(0.0, change.scheduled - time.monotonic()))
            tracker.expect(change)
            pool.submit(timed, change)


def wait_seen(changes: list[Change], timeout: float) -> None:
    deadline = (changes[-1].scheduled if changes else time.monotonic()) + timeout
    while time.monotonic() < deadline:
        if all(effect in c.seen for c in changes for effect in c.due):
            return
        time.sleep(0.1)


def patch_data(api: Api, change: Change) -> None:
    secret = change.secret
    path = f"/api/v1/namespaces/{secret.namespace}/secrets/{secret.name}"
    response = api.request("PATCH", path, {"data": change.data}, content_type=MERGE_PATCH)
    if response.status >= 300:
        raise RuntimeError(f"{response.status} {response.data[:200]!r}")


def run_changes(
    api: Api, changes: list[Change], rate: float, timeout: float, send: Callable[[Change], None]
) -> list[Change]:
    tracker = Tracker()  # the watches on a client of their own: the senders' pool stays theirs
    started = watches(Api(api.stack), tracker, {effect for c in changes for effect in c.due})
    try:
        open_loop(changes, rate, send, tracker)
        wait_seen(changes, timeout)
    finally:
        for watch in started:
            watch.stop()
    return changes


def dump_changes(path: Path, changes: list[Change], stages: Stages) -> None:
    """One JSON line per change, its moments in ms from the first change's: to see whether slow ones
    come together (a pause somewhere) or alone."""
    start = changes[0].scheduled if changes else 0.0

    def ms(moment: float) -> float | None:
        return round((moment - start) * 1000, 1) if moment else None

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for change in changes:
            line = {
                "namespace": change.secret.namespace,
                "secret": change.secret.name,
                "check": change.secret.check,
                "scheduled": ms(change.scheduled),
                "sent": ms(change.sent),
                "answered": ms(change.answered),
                "error": change.error,
                "seen": {effect: ms(moment) for effect, moment in change.seen.items()},
                "stages": {stage: ms(moment) for stage, moment in stages.stages_of(change).items()},
            }
            out.write(json.dumps(line) + "\n")


class Stages(threading.Thread):
    """With --dump: when each Secret's new notAfter first crossed the bus, as the watcher's object
    message and in an evaluation result's annotation patch (a core subscription sees every JetStream
    publish). Tells which stage a slow change waited in, without slowing the services."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="stages")
        self.url = url
        self.seen: dict[tuple[str, str, str, str], float] = {}  # (stage, namespace, Secret, notAfter) -> when
        self.ready, self.stopping = threading.Event(), threading.Event()

    def run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        connection = await nats.connect(self.url)
        await connection.subscribe(f"{subjects.PREFIX}.objects.>", cb=self._on_object)
        await connection.subscribe(f"{subjects.PREFIX}.results.>", cb=self._on_result)
        await connection.flush()
        self.ready.set()
        while not self.stopping.is_set():
            await asyncio.sleep(0.1)
        await connection.close()

    def _saw(self, stage: str, namespace: str, name: str, not_after: str) -> None:
        self.seen.setdefault((stage, namespace, name, not_after), time.monotonic())

    async def _on_object(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            observed = messages.object_decoder.decode(msg.data)
            if isinstance(observed, messages.SecretObserved):
                for source in observed.sources:
                    for cert in source.certs[:1]:
                        if cert.not_after is not None:
                            self._saw("observed", observed.namespace, observed.name, rfc3339(cert.not_after))

    async def _on_result(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            result = messages.result_decoder.decode(msg.data)
            if isinstance(result, messages.EvaluationResult):
                for patch in result.annotation_patches:
                    value = patch.annotations.get(ann.NOT_AFTER)
                    if value:
                        self._saw("evaluated", patch.namespace, patch.name, value)

    def stages_of(self, change: Change) -> dict[str, float]:
        key = (change.secret.namespace, change.secret.name, change.value)
        return {s: self.seen[(s, *key)] for s in ("observed", "evaluated") if (s, *key) in self.seen}

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)


class CpuTimeline(threading.Thread):
    """With --dump: the CPU each process of the run used, every ``interval`` seconds while the changes
    are sent (the kernel counts in 10 ms ticks): which process was busy when slow changes came together."""

    def __init__(self, stack: Stack, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="cpu-timeline")
        cp = stack.control_plane
        procs = {"kube-apiserver": cp.apiserver, "etcd": cp.etcd}
        procs.update({f"nats-{i}": node.proc for i, node in enumerate(stack.nats_cluster)})
        procs.update({name: service.proc for name, service in stack.services.items() if service.running})
        self.pids = {name: proc.pid for name, proc in procs.items() if proc is not None}
        self.pids["benchmark"] = os.getpid()
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []  # (when, CPU seconds so far by process)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), {n: cpu_seconds(p) for n, p in self.pids.items()}))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)

    def dump(self, path: Path, start: float) -> None:
        """One JSON line per interval: its end in ms from ``start``, and each process's CPU ms in it."""
        with path.open("w") as out:
            for (_, before), (at, after) in zip(self.samples, self.samples[1:], strict=False):
                used = {n: round((after[n] - before[n]) * 1000) for n in after if after[n] > before[n]}
                out.write(json.dumps({"at": round((at - start) * 1000, 1), "cpu": used}) + "\n")


def record_changes(changes: list[Change]) -> None:
    """Put in the plan the notAfter each change left in its Secret (those answered without an error, the
    latest scheduled last): the next changes are planned from there, with the right Event reasons."""
    for change in sorted(changes, key=lambda c: c.scheduled):
        if not change.error:
            change.secret.not_after = change.not_after


# --- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    due: int
    seen: int
    p50: float = math.nan  # milliseconds
    p99: float = math.nan
    max: float = math.nan

    def __str__(self) -> str:
        if not self.seen:
            return f"none of {self.due} seen" if self.due else "n/a (none due)"
        figures = f"p50={self.p50:.0f}ms p99={self.p99:.0f}ms max={self.max:.0f}ms"
        return f"{figures}  (seen {self.seen} of {self.due} due)"

    @property
    def brief(self) -> str:
        return f"{self.p50:.0f}/{self.p99:.0f}" if self.seen else "-"


def latency(values: list[float], due: int) -> Latency:
    if not values:
        return Latency(due, 0)
    ordered = sorted(v * 1000 for v in values)
    p99 = ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]
    return Latency(due, len(ordered), statistics.median(ordered), p99, ordered[-1])


def effect_latency(changes: list[Change], effect: str) -> Latency:
    due = [c for c in changes if effect in c.due]
    return latency([c.seen[effect] - c.scheduled for c in due if effect in c.seen], len(due))


def round_trips(changes: list[Change]) -> Latency:
    answered = [c for c in changes if not c.error]
    return latency([c.answered - c.sent for c in answered], len(changes))


def rate(changes: list[Change]) -> float:
    span = changes[-1].scheduled - changes[0].scheduled if changes else 0.0
    return (len(changes) - 1) / span if span > 0 else math.nan


def lag_ms(changes: list[Change]) -> float:
    """How far behind its schedule the latest change was sent (the benchmark keeping up)."""
    return max((c.sent - c.scheduled for c in changes), default=0.0) * 1000


# --- the floor ------------------------------------------------------------------------------------


@dataclass
class Floor:
    patches: int
    seconds: float
    concurrency: int
    round_trip: Latency
    seen: Latency  # until a watch shows the patched annotation
    lag_ms: float
    foreign_cpu: tuple[float, float]  # Machine.foreign() during the burst and the changes
    writer_cpu: float  # CPU seconds the writer itself spent on the burst (the benchmark's process)
    sweep: Sweep | None = None  # with --sweep: the API server alone, two writes per change

    def for_writes(self, writes: int) -> float:
        """Seconds the API server takes for ``writes`` annotation patches at the recorder's concurrency."""
        return self.seconds * writes / self.patches


def floor_burst(writer: KubeWriter, plan: Plan, concurrency: int) -> tuple[float, float]:
    """Seconds for one annotation patch per Secret, ``concurrency`` at once, as the recorder sends them,
    and the CPU seconds the writer spent on them: the least a recorder in Python can spend."""
    patches = [
        AnnotationPatch(s.namespace, s.name, s.uid, {ann.NOT_AFTER: s.annotated}) for s in plan.secrets
    ]
    started, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(writer.patch_annotations, patches))
    return time.monotonic() - started, time.process_time() - cpu


def floor_changes(api: Api, writer: KubeWriter, plan: Plan, args: argparse.Namespace) -> list[Change]:
    """Single annotation patches at the change rate, each timed until answered and until watched."""
    now, targets = datetime.now(UTC), plan.secrets
    changes = [
        Change(targets[i % len(targets)], now + timedelta(days=500, seconds=i), ("annotation",))
        for i in range(change_count(args))
    ]

    def patch(change: Change) -> None:
        secret = change.secret
        annotations: dict[str, str | None] = {ann.NOT_AFTER: change.value}
        writer.patch_annotations(AnnotationPatch(secret.namespace, secret.name, secret.uid, annotations))

    return run_changes(api, changes, args.rate, args.effect_timeout, patch)


def measure_floor(workdir: Path, certificates: int, args: argparse.Namespace) -> Floor:
    stack = Stack(workdir / "floor")
    try:
        stack.start_infrastructure()
        api = Api(stack)
        plan = floor_plan(certificates, datetime.now(UTC))
        create_objects(api, plan)
        writer, concurrency, machine = (
            KubeWriter(api.client, "recorder"),
            Settings().write_concurrency,
            Machine(stack),
        )
        seconds, writer_cpu = floor_burst(writer, plan, concurrency)
        changes = floor_changes(api, writer, plan, args)
        seen = effect_latency(changes, "annotation")
        foreign = machine.foreign()
        return Floor(
            certificates,
            seconds,
            concurrency,
            round_trips(changes),
            seen,
            lag_ms(changes),
            foreign,
            writer_cpu,
            floor_sweep(stack, api, writer, plan, args) if args.sweep else None,
        )
    finally:
        stack.stop()


def floor_sweep(stack: Stack, api: Api, writer: KubeWriter, plan: Plan, args: argparse.Namespace) -> Sweep:
    """The sweep's rates with the API server alone: per change the data patch the shapes send, then at
    once the annotation patch a recorder would send (what certcheck costs it at the least, with no
    service's CPU in between). The highest rate certcheck could sustain on this machine."""
    now = datetime.now(UTC)

    def batch(first: int, count: int) -> list[Change]:
        changes = []
        for i in range(first, first + count):
            secret = plan.secrets[i % len(plan.secrets)]
            not_after = (now + timedelta(days=400 + i % 50, hours=12, seconds=i)).replace(microsecond=0)
            cert, pem_key = make_cert(f"{secret.name}.floor-{i}", not_after)
            changes.append(Change(secret, not_after, ("annotation",), data=tls_secret_data(cert, pem_key)))
        return changes

    def send(change: Change) -> None:
        patch_data(api, change)
        secret = change.secret
        annotations: dict[str, str | None] = {ann.NOT_AFTER: change.value}
        writer.patch_annotations(AnnotationPatch(secret.namespace, secret.name, secret.uid, annotations))

    return sweep_rates(stack, api, args, batch, send, settle=lambda: time.sleep(2.0))


def noise_note(foreign: tuple[float, float]) -> str:
    return f"meanwhile other processes used {foreign[0]:.1f} CPU-s, the hypervisor stole {foreign[1]:.1f} s"


def print_floor(floor: Floor, rate: float) -> None:
    print(f"== floor: the API server alone ({floor.patches} TLS Secrets)")
    print(
        f"  {floor.patches} annotation merge patches, {floor.concurrency} at once: {floor.seconds:.2f}s "
        f"({floor.patches / floor.seconds:.0f}/s, {floor.seconds / floor.patches * 1000:.2f} ms each); "
        f"the writer's own CPU {floor.writer_cpu / floor.patches * 1000:.2f} ms per patch"
    )
    print(f"  one patch at {rate:g}/s, round trip:       {floor.round_trip}")
    print(f"  one patch at {rate:g}/s, until watch sees: {floor.seen}")
    print(f"  sends lagged <= {floor.lag_ms:.0f}ms; {noise_note(floor.foreign_cpu)}")
    if floor.sweep is not None:
        print("  the sweep's rates, two writes per change (the data patch, then the annotation patch):")
        print_sweep(floor.sweep)


# --- the sweep ------------------------------------------------------------------------------------


SWEEP_GROWTH = 3.0  # a sustained rate's annotation p99 is at most this many times the lowest rate's


@dataclass
class SweepStep:
    rate: float  # changes per second
    changes: list[Change]
    foreign_cpu: tuple[float, float]  # Machine.foreign() during the changes
    cpu: dict[str, float] = field(default_factory=dict)  # cpu_by_part() during the changes
    seconds: float = 0.0  # from the first change sent until every effect was seen (or given up)

    @property
    def cores(self) -> str:
        """The cores each part kept busy meanwhile, on average."""
        return " ".join(f"{used / max(self.seconds, 1e-9):.2f}" for used in self.cpu.values())

    @property
    def annotation(self) -> Latency:
        return effect_latency(self.changes, "annotation")

    @property
    def never_seen(self) -> int:
        figures = [effect_latency(self.changes, effect) for effect in EFFECTS]
        return sum(f.due - f.seen for f in figures)


@dataclass
class Sweep:
    """Open-loop batches of changes at rising rates, until one rate is not sustained."""

    rates: list[float]  # as asked, lowest first
    duration: float  # seconds per rate
    p99_limit: float  # milliseconds
    steps: list[SweepStep] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        """The lowest rate's annotation p99, milliseconds."""
        return self.steps[0].annotation.p99 if self.steps else math.nan

    @property
    def criterion(self) -> str:
        return (
            f"every annotation seen, its p99 <= {self.p99_limit:g}ms and <= {SWEEP_GROWTH:g}x the lowest "
            f"rate's ({self.baseline:.0f}ms)"
        )

    def verdict(self, step: SweepStep) -> str:
        """Whether the rate was sustained: "yes", or why not."""
        figures = step.annotation
        if figures.seen < figures.due:
            return f"no: {figures.due - figures.seen} annotations never seen"
        if figures.p99 > self.p99_limit:
            return f"no: p99 > {self.p99_limit:g}ms"
        if figures.p99 > SWEEP_GROWTH * self.baseline:
            return f"no: p99 > {SWEEP_GROWTH:g}x the lowest rate's"
        return "yes"

    @property
    def highest(self) -> float | None:
        """The highest rate sustained (every rate before it was), or None."""
        sustained = [step.rate for step in self.steps if self.verdict(step) == "yes"]
        return max(sustained, default=None)

    @property
    def cell(self) -> str:
        """For the summary: the highest sustained rate, or below the lowest tried."""
        if not self.steps:
            return "-"
        highest = self.highest
        return f"{highest:g}" if highest is not None else f"<{self.steps[0].rate:g}"


def run_sweep(stack: Stack, api: Api, plan: Plan, first: int, args: argparse.Namespace) -> Sweep:
    """The sweep's rates against certcheck. ``first``: how many changes the plan's Secrets went through
    before."""

    def batch(start: int, count: int) -> list[Change]:
        return plan_changes(plan, count, Settings().status_cap, datetime.now(UTC), first + start)

    return sweep_rates(
        stack, api, args, batch, lambda c: patch_data(api, c), settle=lambda: wait_quiet(stack)
    )


def sweep_rates(
    stack: Stack,
    api: Api,
    args: argparse.Namespace,
    batch: Callable[[int, int], list[Change]],
    send: Callable[[Change], None],
    settle: Callable[[], object],
) -> Sweep:
    """One open-loop batch of changes per rate (``batch(first, count)``), lowest first, settling after
    each (its trailing writes are not the next rate's); stops after the first rate not sustained."""
    sweep, first = Sweep(args.sweep, args.sweep_duration, args.sweep_p99), 0
    for per_second in args.sweep:
        count = max(1, round(per_second * args.sweep_duration))
        changes = batch(first, count)
        first += count
        machine, cpu, started = Machine(stack), cpu_by_part(stack), time.monotonic()
        run_changes(api, changes, per_second, args.effect_timeout, send)
        foreign, elapsed = machine.foreign(), time.monotonic() - started
        used = {part: seconds - cpu[part] for part, seconds in cpu_by_part(stack).items()}
        record_changes(changes)
        settle()
        sweep.steps.append(SweepStep(per_second, changes, foreign, used, elapsed))
        if sweep.verdict(sweep.steps[-1]) != "yes":
            break
    return sweep


def rates(text: str) -> list[float]:
    """``50,100,200``: changes per second, each positive, lowest first; empty for none."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from exc
    if any(not 0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"rates must be positive: {text!r}")
    return values


# --- a shape --------------------------------------------------------------------------------------


@dataclass
class ShapeResult:
    shape: Shape
    plan: Plan
    created: float
    cold: ColdStart
    floor: float  # seconds, for the shape's annotation writes
    settled: float
    changes: list[Change]
    change_cpu: dict[str, float]  # per service, CPU seconds during the changes
    change_foreign_cpu: tuple[float, float]  # Machine.foreign() meanwhile
    change_evaluations: tuple[float, float]  # evaluations during the changes, and the seconds they took
    restart_writes: float  # the recorder's count
    restart_audit: Counter[tuple[str, str]]  # every certcheck write in the audit log
    sweep: Sweep | None = None  # with --sweep
    change_traffic: Counter[str] = field(default_factory=Counter)  # bus_traffic() during the changes
    change_audit: Counter[tuple[str, str]] = field(default_factory=Counter)  # certcheck's writes for them
    change_parts: dict[str, float] = field(default_factory=dict)  # cpu_by_part() during the changes

    @property
    def ratio(self) -> float:
        return self.cold.seconds / self.floor

    @property
    def cpu_ms_per_cert(self) -> float:
        return sum(self.cold.cpu.values()) / self.plan.certificates * 1000

    @property
    def requests_per_cert(self) -> float:
        return self.cold.requests.total() / self.plan.certificates


def change_count(args: argparse.Namespace) -> int:
    count: int = max(1, round(args.rate * args.duration))
    return count


def quiet_restart(stack: Stack) -> tuple[float, Counter[tuple[str, str]]]:
    """Stop every service, start it again, wait 10 s: (the recorder's writes, every certcheck write)."""
    offset = audit_offset(stack)
    writes = measure.quiet_restart(stack)
    return writes, audit_writes(stack, offset)


def run_shape(workdir: Path, shape: Shape, floor: Floor, args: argparse.Namespace) -> ShapeResult:
    stack = Stack(workdir / shape.name, all_in_one=args.all_in_one)
    try:
        stack.start_infrastructure()
        api = Api(stack)
        plan = plan_shape(shape, datetime.now(UTC))
        created = create_objects(api, plan)
        env = {"watcher": {"CERTCHECK_SECRET_TYPES": args.secret_types}}
        profiles = Profiles(args.profile, shape.name)
        cold = cold_start(stack, api, plan, env, args.cold_timeout, profiles, args.evaluators)
        settled = wait_quiet(stack)
        changes = plan_changes(plan, change_count(args), Settings().status_cap, datetime.now(UTC))
        cpu, machine, traffic = service_cpu(stack), Machine(stack), bus_traffic(stack)
        parts, offset = cpu_by_part(stack), audit_offset(stack)
        evaluated = evaluations(stack, args.evaluators)
        stages, timeline = Stages(stack.nats.url), CpuTimeline(stack)
        if args.dump is not None:
            stages.start()
            stages.ready.wait(10)
            timeline.start()
        with profiles.phase(stack, "changes"):
            run_changes(api, changes, args.rate, args.effect_timeout, lambda c: patch_data(api, c))
        if args.dump is not None:
            stages.stop()
            timeline.stop()
        change_cpu = {name: seconds - cpu.get(name, 0.0) for name, seconds in service_cpu(stack).items()}
        change_parts = {part: seconds - parts[part] for part, seconds in cpu_by_part(stack).items()}
        change_traffic = bus_traffic(stack)
        change_traffic.subtract(traffic)
        if args.dump is not None:
            dump_changes(args.dump / f"{shape.name}.jsonl", changes, stages)
            timeline.dump(args.dump / f"{shape.name}-cpu.jsonl", changes[0].scheduled if changes else 0.0)
        count, seconds = evaluations(stack, args.evaluators)
        evaluated = (count - evaluated[0], seconds - evaluated[1])
        foreign = machine.foreign()
        record_changes(changes)
        wait_quiet(stack)  # the changes' trailing writes are not the restart's
        change_audit = audit_writes(stack, offset)
        restart, audited = quiet_restart(stack)
        # Last: a rate that is not sustained may leave a backlog behind.
        sweep = run_sweep(stack, api, plan, len(changes), args) if args.sweep else None
        floor_seconds = floor.for_writes(len(plan.selected))
        result = ShapeResult(
            shape,
            plan,
            created,
            cold,
            floor_seconds,
            settled,
            changes,
            change_cpu,
            foreign,
            evaluated,
            restart,
            audited,
        )
        result.sweep = sweep
        result.change_traffic = change_traffic
        result.change_audit, result.change_parts = change_audit, change_parts
        return result
    finally:
        stack.stop()


def describe(shape: Shape, plan: Plan) -> str:
    tls_noise = sum(1 for s in plan.secrets if not s.check)
    opaque = len(plan.selected) - plan.certificates
    kinds = "half matchExpressions" if shape.expressions else "matchLabels"
    text = (
        f"{shape.namespaces} namespace(s) x {shape.checks} CertCheck(s) x {shape.per_check} Secrets "
        f"= {plan.certificates} certificates, {kinds}"
    )
    return text + (f"; noise: {tls_noise} unselected TLS, {opaque} selected Opaque" if tls_noise else "")


def print_shape(result: ShapeResult) -> None:
    cold, plan = result.cold, result.plan
    print(f"== {result.shape.name}: {describe(result.shape, plan)}")
    print(f"  created {len(plan.secrets)} Secrets and {len(plan.checks)} CertChecks in {result.created:.1f}s")
    print(
        f"  cold start: {cold.seconds:.2f}s = {result.ratio:.2f}x the floor ({result.floor:.2f}s for "
        f"{len(plan.selected)} annotation patches); trailing work settled {result.settled:.1f}s later"
    )
    print(f"    {noise_note(cold.foreign_cpu)}")
    print(
        f"    every service ready (/readyz) {cold.ready.seconds:.2f}s after its start, having used "
        f"{cold.ready.cpu:.1f}s CPU"
    )
    print("    service CPU s: " + ", ".join(f"{n} {s:.1f}" for n, s in cold.cpu.items()))
    print(
        f"    = {result.cpu_ms_per_cert:.2f} ms CPU per certificate "
        f"({(sum(cold.cpu.values()) - cold.ready.cpu) / result.plan.certificates * 1000:.2f} after ready)"
    )
    print("    peak RSS MiB: " + ", ".join(f"{n} {m:.0f}" for n, m in cold.rss.items()))
    print(f"    = {sum(cold.rss.values()):.0f} MiB in all")
    if cold.shares:
        total = len(plan.secrets)
        print(
            f"    evaluator replicas (partitions held, Secrets in their views = share of all {total}): "
            + ", ".join(f"{n} {p}, {k} = {k / max(1, total):.0%}" for n, (p, k) in cold.shares.items())
        )
    verbs = ", ".join(f"{v} {n}" for v, n in sorted(cold.requests.items()) if n)
    print(
        f"    API requests (kube-apiserver apiserver_request_total, less the benchmark's {cold.own_requests}"
        f" LISTs; open watches not counted): {cold.requests.total()} = {result.requests_per_cert:.2f} per"
        f" certificate ({verbs})"
    )
    print(
        "    writes by certcheck's users (audit log): "
        + summed(cold.audit, 0)
        + "; recorder counts "
        + ", ".join(f"{k} {v:.0f}" for k, v in cold.writes.items())
    )
    print("    work: " + ", ".join(f"{k} {v}" for k, v in sorted(cold.work.items()) if v))
    print(f"    bus messages per certificate: {traffic_per_change(cold.traffic, plan.certificates)}")
    print_changes(result)
    if result.sweep is not None:
        print_sweep(result.sweep)
    print(
        f"  quiet restart: {result.restart_writes:.0f} writes counted by the recorder in the 10 s after, "
        f"{result.restart_audit.total()} by any certcheck service in the audit log "
        f"({summed(result.restart_audit, 1)})"
    )


def traffic_per_change(traffic: Counter[str], changes: int) -> str:
    """Per connection name, messages taken in and given out per change ("watcher 2.0/1.0"); then the
    JetStream API requests and nats-server's CPU, per change."""
    names = sorted({key.rsplit(" ", 1)[0] for key in traffic if key not in (JS_API, NATS_CPU_MS)})
    parts = [
        f"{name} {traffic[f'{name} in'] / changes:.1f}/{traffic[f'{name} out'] / changes:.1f}"
        for name in names
        if traffic[f"{name} in"] or traffic[f"{name} out"]
    ]
    return (
        "(in/out, as nats-server counts) "
        + ", ".join(parts)
        + f"; {JS_API} {traffic[JS_API] / changes:.2f}, {NATS_CPU_MS} {traffic[NATS_CPU_MS] / changes:.2f}"
    )


def print_changes(result: ShapeResult) -> None:
    changes = result.changes
    errors = sum(1 for c in changes if c.error)
    per_change = {name: seconds / len(changes) * 1000 for name, seconds in result.change_cpu.items()}
    print(
        f"  {len(changes)} open-loop changes at {rate(changes):.1f}/s"
        f" (sends lagged <= {lag_ms(changes):.0f}ms, {errors} failed); service CPU"
        f" {sum(per_change.values()):.1f} ms per change ("
        + ", ".join(f"{name} {ms:.1f}" for name, ms in per_change.items())
        + ")"
    )
    count, seconds = result.change_evaluations
    print(
        f"    the evaluators ran {count:.0f} CertCheck evaluations ({count / len(changes):.2f} per change),"
        f" {seconds / max(count, 1) * 1000:.1f} ms each in the pure core"
    )
    print(f"    {noise_note(result.change_foreign_cpu)}")
    print(f"    bus messages per change: {traffic_per_change(result.change_traffic, len(changes))}")
    writes: Counter[str] = Counter()
    for (_, what), count in result.change_audit.items():
        writes[what] += count
    print(
        "    certcheck's API writes per change (audit log): "
        + (", ".join(f"{what} {n / len(changes):.2f}" for what, n in sorted(writes.items())) or "none")
    )
    print(
        "    CPU ms per change: "
        + ", ".join(f"{part} {used / len(changes) * 1000:.1f}" for part, used in result.change_parts.items())
    )
    print(f"    data patch round trip:  {round_trips(changes)}")
    for effect in EFFECTS:
        print(f"    -> {effect + ':':<12} {effect_latency(changes, effect)}")


def print_sweep(sweep: Sweep) -> None:
    print(
        f"  sweep: open-loop changes for {sweep.duration:g}s per rate, lowest first, quiet between; "
        f"sustained = {sweep.criterion}"
    )
    parts = " ".join(sweep.steps[0].cpu) if sweep.steps else ""
    print(
        f"    {'rate/s':>8}{'annotation p50/p99':>20}{'status p99':>12}{'never seen':>12}"
        f"{'sends lagged':>14}{'failed':>8}{'other CPU-s':>13}  cores used ({parts}) | sustained"
    )
    for step in sweep.steps:
        status = effect_latency(step.changes, "status")
        errors = sum(1 for c in step.changes if c.error)
        print(
            f"    {step.rate:>8g}{step.annotation.brief + 'ms':>20}"
            f"{(f'{status.p99:.0f}ms' if status.seen else '-'):>12}{step.never_seen:>12}"
            f"{f'<= {lag_ms(step.changes):.0f}ms':>14}{errors:>8}{step.foreign_cpu[0]:>13.1f}"
            f"  {step.cores} | {sweep.verdict(step)}"
        )
    highest, untried = sweep.highest, sweep.rates[len(sweep.steps) :]
    found, last = f"{highest:g}/s" if highest is not None else "none", sweep.steps[-1].rate
    if untried:
        rest = f"not sustained at {last:g}/s, so not tried: {', '.join(f'{r:g}/s' for r in untried)}"
    elif highest == last:
        rest = "every rate tried was sustained: the limit is higher"
    else:
        rest = f"not sustained at {last:g}/s"
    print(f"    highest sustained rate: {found} ({rest})")


def print_summary(results: list[ShapeResult], floor: Floor) -> None:
    print("== summary: cold start against the floor measured in this run (other CPU-s: load not this run's)")
    print(
        f"{'shape':<8}{'certs':>7}{'cold s':>8}{'floor s':>9}{'ratio':>7}{'CPU ms/cert':>13}"
        f"{'MiB':>7}{'req/cert':>10}{'restart writes':>16}{'other CPU-s':>13}"
    )
    for r in results:
        print(
            f"{r.shape.name:<8}{r.plan.certificates:>7}{r.cold.seconds:>8.2f}{r.floor:>9.2f}{r.ratio:>7.2f}"
            f"{r.cpu_ms_per_cert:>13.2f}{sum(r.cold.rss.values()):>7.0f}{r.requests_per_cert:>10.2f}"
            f"{r.restart_writes:>16.0f}{r.cold.foreign_cpu[0]:>13.1f}"
        )
    print(f"{'floor':<8}{floor.patches:>7}{'':>8}{floor.seconds:>9.2f}{'':>53}{floor.foreign_cpu[0]:>13.1f}")
    base = floor.seen.p50
    print(
        "== changes: p50/p99 ms from each change's scheduled moment; "
        f"x = p50 / the floor's patch-until-watch-sees p50 ({base:.0f}ms)"
    )
    print(
        f"{'shape':<8}{'patch':>10}"
        + "".join(f"{e:>14}{'x':>8}" for e in EFFECTS)
        + f"{'never seen':>12}{'other CPU-s':>13}{'sustained/s':>13}"
    )
    for r in results:
        row, missed = f"{r.shape.name:<8}{round_trips(r.changes).brief:>10}", 0
        for effect in EFFECTS:
            figures = effect_latency(r.changes, effect)
            missed += figures.due - figures.seen
            row += f"{figures.brief:>14}{figures.p50 / base:>8.1f}"
        sustained = r.sweep.cell if r.sweep is not None else "-"
        print(row + f"{missed:>12}{r.change_foreign_cpu[0]:>13.1f}{sustained:>13}")
    floor_sustained = floor.sweep.cell if floor.sweep is not None else "-"
    print(
        f"{'floor':<8}{floor.round_trip.brief:>10}{floor.seen.brief:>14}{1.0:>8.1f}"
        f"{'':>44}{floor_sustained:>13}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="x the Secrets per CertCheck")
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of changes")
    parser.add_argument("--effect-timeout", type=float, default=30.0, help="s after the last change")
    parser.add_argument(
        "--sweep",
        type=rates,
        default="",
        help="comma-separated changes per second, e.g. 50,100,200,400: after the changes at --rate, "
        "the highest rate sustained without the latency growing (default: no sweep)",
    )
    parser.add_argument("--sweep-duration", type=float, default=10.0, help="seconds of changes per rate")
    parser.add_argument(
        "--sweep-p99", type=float, default=1000.0, help="ms: the most annotation p99 a sustained rate has"
    )
    parser.add_argument("--cold-timeout", type=float, default=900.0)
    parser.add_argument(
        "--secret-types",
        default="kubernetes.io/tls,Opaque",
        help="the watcher's CERTCHECK_SECRET_TYPES (with Opaque, the noise Secrets reach the services)",
    )
    parser.add_argument(
        "--all-in-one", action="store_true", help="certcheck as one process (certcheck all), not five"
    )
    parser.add_argument(
        "--evaluators",
        type=int,
        default=1,
        help="evaluator replicas (they share the partitions): each one's share of the objects is printed",
    )
    parser.add_argument(
        "--dump",
        type=Path,
        default=None,
        help="a directory: each shape's changes at --rate, one JSON line per change (when it was "
        "scheduled, sent, answered and each effect seen, in ms from the first change's moment), and "
        "<shape>-cpu.jsonl: each process's CPU ms in every 50 ms meanwhile",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a directory: py-spy samples each process during cold start and the changes (pip install "
        "'.[bench]'), one collapsed-stack file per shape, phase and process",
    )
    args = parser.parse_args()
    if args.all_in_one and args.evaluators > 1:
        parser.error("--evaluators is for the split deployment")
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    shapes = [scaled(SHAPES[n], args.scale) for n in names]
    mode = "one process (certcheck all)" if args.all_in_one else "five processes"
    print(
        f"shapes {', '.join(names)} at scale {args.scale:g}; watcher secret types {args.secret_types}; "
        f"certcheck as {mode}"
    )
    with tempfile.TemporaryDirectory(prefix="certcheck-shapes-") as workdir:
        floor = measure_floor(Path(workdir), max(s.certificates for s in shapes), args)
        print_floor(floor, args.rate)
        results = []
        for shape in shapes:
            results.append(run_shape(Path(workdir), shape, floor, args))
            print_shape(results[-1])
        print_summary(results, floor)


if __name__ == "__main__":
    main()
