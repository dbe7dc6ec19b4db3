"""docker-compose.yml, checked without a Docker engine: against the Compose specification's own JSON
schema (vendored in tests/schemas/), and for the things that schema cannot see (dependencies that
exist and can be waited for, files that exist, credentials that match the NATS users)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
import yaml

from devcluster import binaries
from devcluster.cluster import free_port
from devcluster.stack import SERVICES
from schemas.permissions import SERVICE_PERMISSIONS, inbox_prefix, password_variable

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def test_the_file_is_valid_under_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_a_broken_file_would_be_caught(compose: dict[str, Any]) -> None:
    schema = json.loads((REPO / "tests" / "schemas" / "compose-spec.json").read_text())
    broken = {**compose, "services": {**compose["services"], "nats": {"image": "nats", "ports": [{"x": 1}]}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_every_dependency_exists_and_can_be_waited_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} must run once"


def test_every_certcheck_service_runs_after_nats_and_the_setup_job(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [name]
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"
        assert service["depends_on"]["setup"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in service and service["build"] == "."


def test_every_mounted_file_and_the_build_context_exist(compose: dict[str, Any]) -> None:
    assert (REPO / "Dockerfile").is_file()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (REPO / source).exists(), source
            else:
                assert source in compose["volumes"], source


def test_prometheus_scrapes_every_service_and_loads_the_project_rules() -> None:
    config = yaml.safe_load((REPO / "compose" / "prometheus.yml").read_text())
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(f"{name}:8080" for name in SERVICES)
    rules = yaml.safe_load((REPO / "compose" / "certcheck-rules.yml").read_text())
    rule = yaml.safe_load((REPO / "k8s" / "monitoring" / "prometheusrule.yaml").read_text())
    assert rules == {"groups": rule["spec"]["groups"]}
    _, promtool = binaries.prometheus_tools()
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(REPO / "compose" / "certcheck-rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_service_logs_in_to_the_compose_nats_with_its_own_user(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The shipped auth.conf with the compose file's passwords, on a real nats-server."""
    nats_env = compose["services"]["nats"]["environment"]
    port = free_port()
    config = tmp_path / "nats.conf"
    shutil.copy(REPO / "k8s" / "nats" / "auth.conf", tmp_path / "auth.conf")  # includes are relative
    config.write_text(f"listen: 127.0.0.1:{port}\ninclude ./auth.conf\n")
    server = subprocess.Popen(
        [str(binaries.nats_server()), "-c", str(config)],
        env={**os.environ, **{k: str(v) for k, v in nats_env.items()}},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_open(port):
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.1)

        async def log_in(user: str, password: str) -> None:
            nc = await nats.connect(
                f"nats://127.0.0.1:{port}",
                user=user,
                password=password,
                inbox_prefix=inbox_prefix(user),
                max_reconnect_attempts=0,
                connect_timeout=5,
            )
            await nc.close()

        for name in SERVICE_PERMISSIONS:
            env = compose["services"][name]["environment"]
            assert env["CERTCHECK_NATS_USER"] == name
            assert env["CERTCHECK_NATS_PASSWORD"] == nats_env[password_variable(name)]
            asyncio.run(log_in(name, env["CERTCHECK_NATS_PASSWORD"]))
    finally:
        server.terminate()
        server.wait(10)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI (the schema test above covers it)")
def test_docker_compose_config_accepts_it_where_the_plugin_exists() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
