"""What the benchmarks read off a running stack: service metrics, CPU, peak RSS, quiet periods."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

from devcluster.stack import Stack


def _family(stack: Stack, service: str, name: str) -> str:
    """One metric family as the service exposes it ("" while it is not serving yet)."""
    # Only that family: rendering every certificate's series at each poll would cost the process more
    # CPU than what is measured (the all-in-one process serves the exporter's on the same port).
    url = f"http://127.0.0.1:{stack.http_ports[stack.process_of(service)]}/metrics?name[]={name}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def metric(stack: Stack, service: str, name: str, labels: str = "") -> float:
    text = _family(stack, service, name)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_by_label(stack: Stack, service: str, name: str) -> dict[str, float]:
    """Every series of one family, by its labels as written ('kind="x",outcome="ok"')."""
    found: dict[str, float] = {}
    for line in _family(stack, service, name).splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("} ", 1)
            found[labels] = found.get(labels, 0.0) + float(value)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def wait_quiet(stack: Stack, quiet: float = 2.0, timeout: float = 120) -> float:
    """Until start-up's trailing work (Events, status writes, the watch echoes of what was written) is
    over: nothing written, published or evaluated for ``quiet`` seconds. Returns the seconds waited."""
    started = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - started < timeout:
        now = (
            metric(stack, "recorder", "certcheck_kubernetes_writes_total"),
            metric(stack, "watcher", "certcheck_watcher_published_total"),
            metric(stack, "evaluator", "certcheck_evaluations_total"),
        )
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.1)
    return time.monotonic() - started - quiet


def quiet_restart(stack: Stack, settle_seconds: float = 10.0) -> float:
    """Stop every service, start it again, wait: the Kubernetes writes the recorder counts meanwhile."""
    for name in stack.processes:
        stack.services[name].stop()
    for name in stack.processes:
        stack.start_service(name)
    time.sleep(settle_seconds)
    return metric(stack, "recorder", "certcheck_kubernetes_writes_total")
