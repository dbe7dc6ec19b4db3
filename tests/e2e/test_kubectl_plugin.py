"""``kubectl certcheck`` against the real API server: the installed executable (and, where kubectl is
on the machine, kubectl finding it on PATH) lists what certcheck recorded, most urgent first, describes a
Secret with its Events, and with too little RBAC says what it could not read instead of failing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devcluster.certs import expiring_in
from devcluster.stack import Stack
from tests.conftest import Cluster, wait_for

PLUGIN = Path(sys.executable).parent / "kubectl-certcheck"


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLUGIN), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def recorded(cluster: Cluster, namespace: str) -> str:
    for name, days in (("web", 5), ("api", 200)):
        cert, key = expiring_in(days)
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "shop"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "shop"}})
    cluster.wait_status(namespace, "c", expiringSoonCount=1, validCount=1)
    wait_for(lambda: cluster.events(namespace, "Secret", "web"), what="web's Warning Event")
    return namespace


def test_list_shows_every_certificate_most_urgent_first_with_filters(stack: Stack, recorded: str) -> None:
    admin = stack.control_plane.kubeconfig
    done = plugin(admin, "list", "-n", recorded, "-o", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["name"], r["key"], r["state"]) for r in rows if r["key"] == "tls.crt"] == [
        ("web", "tls.crt", "ExpiringSoon"),
        ("api", "tls.crt", "Valid"),
    ]
    assert rows[0]["checkedBy"] == [f"{recorded}/c"] and rows[0]["daysRemaining"] in (4, 5)

    table = plugin(admin, "list", "--state", "ExpiringSoon", "--days", "10").stdout.splitlines()
    assert table[0].split()[:4] == ["NAMESPACE", "NAME", "KEY", "STATE"]
    assert any(line.split()[:2] == [recorded, "web"] for line in table[1:])
    assert not any(line.split()[:2] == [recorded, "api"] for line in table[1:])


def test_describe_shows_a_secrets_certificates_checks_and_events(stack: Stack, recorded: str) -> None:
    done = plugin(stack.control_plane.kubeconfig, "describe", f"{recorded}/web")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"Secret:       {recorded}/web" in text
    assert "State:        ExpiringSoon" in text
    assert "Checked by:   c" in text
    events = text.split("Events:")[1]
    assert "ExpiringSoon" in events and "Warning" in events


def test_too_little_rbac_is_reported_not_a_failure(stack: Stack, recorded: str) -> None:
    # The exporter's identity may read nothing in Kubernetes (k8s/base/rbac.yaml).
    done = plugin(stack.kubeconfigs["exporter"], "list", "-n", recorded)
    assert done.returncode == 0
    assert "cannot list CertChecks (HTTP 403)" in done.stderr
    assert "cannot list Secrets (HTTP 403)" in done.stderr
    assert done.stdout.strip() == "No certificates found."


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on this machine")
def test_kubectl_finds_the_plugin_on_path(stack: Stack, recorded: str) -> None:
    env = {**os.environ, "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["kubectl", "certcheck", "--kubeconfig", str(stack.control_plane.kubeconfig), "list", "-n", recorded],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert any(
        line.split()[:4] == [recorded, "web", "tls.crt", "ExpiringSoon"] for line in done.stdout.splitlines()
    )
