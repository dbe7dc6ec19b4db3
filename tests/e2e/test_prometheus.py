"""The alert rules and the dashboard, checked with Prometheus's own tools and a real Prometheus server
that scrapes the running services."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import binaries
from devcluster.certs import expiring_in
from devcluster.cluster import free_port, wait_http_ok
from devcluster.stack import REPO, SERVICES, Stack
from tests.conftest import Cluster, wait_for

MONITORING = REPO / "k8s" / "monitoring"


def write_rules(directory: Path) -> Path:
    """The plain rules file inside the PrometheusRule (the one source of the rules)."""
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    _, promtool = binaries.prometheus_tools()
    write_rules(tmp_path)
    shutil.copy(MONITORING / "tests" / "alerts_test.yaml", tmp_path)
    check = subprocess.run(
        [str(promtool), "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [str(promtool), "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert test.returncode == 0, test.stdout + test.stderr


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())

    def firing(self, alertname: str) -> list[dict[str, str]]:
        alerts = self.get("/api/v1/alerts")["data"]["alerts"]
        return [
            a["labels"] for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]


@pytest.fixture(scope="module")
def prometheus(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server, _ = binaries.prometheus_tools()
    workdir = Path(tmp_path_factory.mktemp("prometheus"))
    rules = write_rules(workdir)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": f"certcheck-{name}",
                "static_configs": [{"targets": [f"127.0.0.1:{stack.http_ports[name]}"]}],
            }
            for name in SERVICES
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                str(server),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", timeout=30)
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(10)


def test_prometheus_scrapes_every_service_and_the_alert_fires_for_an_expiring_certificate(
    cluster: Cluster, namespace: str, prometheus: Prometheus
) -> None:
    wait_for(
        lambda: all(t["health"] == "up" for t in prometheus.get("/api/v1/targets")["data"]["activeTargets"]),
        timeout=20,
        what="every service scraped",
    )
    cert, key = expiring_in(10, "alerting.test")
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "alert"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "alert"}})
    [alert] = wait_for(
        lambda: [
            a
            for a in prometheus.firing("CertcheckCertificateExpiringSoon")
            if a["secret_namespace"] == namespace
        ],
        timeout=30,
        what="the alert to fire",
    )
    assert (alert["secret_name"], alert["subject_CN"], alert["severity"]) == ("s", "alerting.test", "warning")
    assert not [
        a for a in prometheus.firing("CertcheckCertificateExpired") if a["secret_namespace"] == namespace
    ]


def test_every_dashboard_query_is_valid_promql(prometheus: Prometheus) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(expressions) >= 10
    time.sleep(0.1)
    for expr in expressions:
        result = prometheus.get("/api/v1/query", query=expr.replace("$namespace", ".*"))
        assert result["status"] == "success", f"{expr}: {result}"
