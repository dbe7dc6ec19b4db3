"""Start-up, change-latency and quiet-restart figures on a real control plane. Prints; asserts nothing.

    python -m benchmarks.startup [--namespaces N] [--certchecks-per-namespace N] [--secrets-per-certcheck N]

1. Creates the Secrets and CertChecks first, then starts the services, and reports how long until every
   certificate is recorded (all annotations and all statuses written), plus each service's peak RSS.
2. Changes one certificate at a time and reports how long until its annotation shows the change (p50/p99).
3. Restarts every service and reports how many Kubernetes writes the restart caused (target: 0).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from benchmarks.measure import cpu_seconds, metric, peak_rss_mib, quiet_restart, wait_quiet
from devcluster.certs import make_cert, tls_secret_data
from devcluster.stack import SERVICES, Stack, api_client
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION


def create_objects(api: client.ApiClient, namespaces: int, checks: int, per_check: int) -> int:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    now = datetime.now(UTC)
    jobs = []
    for n in range(namespaces):
        ns = f"bench-{n}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        for c in range(checks):
            body = {
                "apiVersion": f"{CERTCHECK_GROUP}/{CERTCHECK_VERSION}",
                "kind": "CertCheck",
                "metadata": {"name": f"check-{c}"},
                "spec": {"selector": {"matchLabels": {"group": f"g{c}"}}, "threshold": 30},
            }
            custom.create_namespaced_custom_object(
                CERTCHECK_GROUP, CERTCHECK_VERSION, ns, CERTCHECK_PLURAL, body
            )
            for s in range(per_check):
                jobs.append((ns, f"cert-{c}-{s}", {"group": f"g{c}"}, (s * 7) % 400 - 10))

    def create(job: tuple[str, str, dict[str, str], int]) -> None:
        ns, name, labels, days = job
        cert, key = make_cert(f"{name}.{ns}.test", now + timedelta(days=days, hours=1))
        core.create_namespaced_secret(
            ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels=labels),
                type="kubernetes.io/tls",
                data=tls_secret_data(cert, key),
            ),
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, jobs))
    return len(jobs)


def wait_recorded(
    stack: Stack, api: client.ApiClient, certs: int, statuses: int, per_check: int, timeout: float = 300
) -> float:
    """Until every annotation is written and every CertCheck's status counts all its certificates (a
    status written from a view still filling up does not count)."""
    started = time.monotonic()
    custom = client.CustomObjectsApi(api)
    while time.monotonic() - started < timeout:
        annotated = metric(
            stack, "recorder", "certcheck_kubernetes_writes_total", 'kind="annotations",outcome="ok"'
        )
        status_writes = metric(
            stack, "recorder", "certcheck_kubernetes_writes_total", 'kind="status",outcome="ok"'
        )
        if annotated >= certs and status_writes >= statuses:
            listed: dict[str, Any] = custom.list_cluster_custom_object(  # type: ignore[assignment]
                CERTCHECK_GROUP, CERTCHECK_VERSION, CERTCHECK_PLURAL
            )
            complete = [
                c for c in listed["items"] if (c.get("status") or {}).get("targetCertsCount") == per_check
            ]
            if len(complete) >= statuses:
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError("not everything was recorded")


def _await_annotation(
    core: client.CoreV1Api, name: str, expected: str, seen: threading.Event, stream: watch.Watch
) -> None:
    for event in stream.stream(
        core.list_namespaced_secret, "bench-0", field_selector=f"metadata.name={name}", timeout_seconds=30
    ):
        annotations = event["object"].metadata.annotations or {}
        if annotations.get("certcheck.dev/not-after", "").startswith(expected):
            seen.set()
            stream.stop()


def change_latency(api: client.ApiClient, samples: int) -> list[float]:
    """Sequential certificate replacements, each timed until the new notAfter shows in the annotation."""
    core = client.CoreV1Api(api)
    latencies: list[float] = []
    for i in range(samples):
        name = f"cert-0-{i % 100}"
        not_after = datetime.now(UTC) + timedelta(days=500 + i)
        cert, key = make_cert(f"{name}.renewed", not_after)
        seen, stream = threading.Event(), watch.Watch()
        follower = threading.Thread(
            target=_await_annotation,
            args=(core, name, not_after.strftime("%Y-%m-%d"), seen, stream),
            daemon=True,
        )
        follower.start()
        time.sleep(0.05)
        started = time.perf_counter()
        core.patch_namespaced_secret(name, "bench-0", {"data": tls_secret_data(cert, key)})
        if seen.wait(10):
            latencies.append(time.perf_counter() - started)
        stream.stop()
        follower.join(1)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--certchecks-per-namespace", type=int, default=10)
    parser.add_argument("--secrets-per-certcheck", type=int, default=100)
    parser.add_argument("--change-samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certcheck-bench-") as workdir:
        stack = Stack(Path(workdir))
        try:
            stack.start_infrastructure()
            api = api_client(stack.control_plane.kubeconfig)
            started = time.monotonic()
            certs = create_objects(
                api, args.namespaces, args.certchecks_per_namespace, args.secrets_per_certcheck
            )
            checks = args.namespaces * args.certchecks_per_namespace
            print(f"created {certs} TLS Secrets and {checks} CertChecks in {time.monotonic() - started:.1f}s")

            started = time.monotonic()
            for name in SERVICES:
                stack.start_service(name, wait=False)
            recorded = wait_recorded(stack, api, certs, checks, args.secrets_per_certcheck) + 0.0
            total = time.monotonic() - started
            print(f"start-up: all {certs} certificates recorded {total:.2f}s after the services were started")
            for kind in ("annotations", "status", "event"):
                writes = metric(stack, "recorder", "certcheck_kubernetes_writes_total", f'kind="{kind}"')
                print(f"  {kind} writes: {writes:.0f}")
            evaluations = metric(stack, "evaluator", "certcheck_evaluations_total")
            print(f"  evaluations: {evaluations:.0f}")
            for name in SERVICES:
                process = stack.services[name].proc
                assert process is not None
                print(
                    f"  {name:<9} peak RSS {peak_rss_mib(process.pid):7.1f} MiB, "
                    f"CPU {cpu_seconds(process.pid):5.1f} s"
                )
            del recorded

            settled = wait_quiet(stack)
            print(f"  start-up's trailing writes and echoes settled {settled:.1f}s after it was recorded")
            latencies = sorted(change_latency(api, args.change_samples))
            if latencies:
                p50 = statistics.median(latencies) * 1000
                p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
                print(
                    f"certificate change -> annotation: n={len(latencies)} p50={p50:.1f}ms p99={p99:.1f}ms "
                    f"max={latencies[-1] * 1000:.1f}ms"
                )

            writes = quiet_restart(stack)
            print(f"restart with nothing changed: {writes:.0f} Kubernetes writes in the 10 s after")
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
