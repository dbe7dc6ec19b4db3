"""Helpers several end-to-end test modules share (one home: test modules never import each other)."""

from __future__ import annotations

import urllib.request

from devcluster.stack import Stack
from tests.conftest import Cluster


def metric(stack: Stack, service: str, name: str, labels: str = "", present: bool = False) -> float:
    """The sum of a metric's matching series (0 when there is none; with ``present``, a missing series
    fails instead, so that "is 0" cannot pass on a series that is not there)."""
    url = f"http://127.0.0.1:{stack.http_ports[service]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    wanted = [fragment for fragment in labels.split(",") if fragment]  # label order in the output is sorted
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith(name + "{") or line.startswith(name + " ")
        if all(fragment in line for fragment in wanted)
    ]
    assert values or not present, f"no series {name}{{{labels}}} on {service}"
    return sum(values)


def state_of(cluster: Cluster, namespace: str, secret: str) -> str | None:
    return cluster.annotations(namespace, secret).get("certcheck.dev/state")
