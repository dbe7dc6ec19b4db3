"""The docker-compose `setup` job's code (devcluster/setup.py), run against the real test API server."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from devcluster import setup
from devcluster.stack import CRD_PATH, Stack, api_client


def test_setup_points_a_kubeconfig_at_the_given_server_and_applies_the_crd(
    stack: Stack, tmp_path: Path
) -> None:
    written = tmp_path / "kube" / "kubeconfig.yaml"
    written.parent.mkdir()
    setup.main(
        [
            f"--kubeconfig={stack.control_plane.kubeconfig}",
            f"--server={stack.control_plane.url}",
            f"--write={written}",
            f"--crd={CRD_PATH}",
            "--no-demo",
        ]
    )
    config = yaml.safe_load(written.read_text())
    assert [c["cluster"]["server"] for c in config["clusters"]] == [stack.control_plane.url]
    assert written.stat().st_mode & 0o777 == 0o644
    crd = client.ApiextensionsV1Api(api_client(written)).read_custom_resource_definition(
        "certchecks.certcheck.dev"
    )
    assert crd.spec.group == "certcheck.dev"


def test_setup_rewrites_the_server_k3s_wrote(tmp_path: Path) -> None:
    source = tmp_path / "k3s.yaml"
    source.write_text(
        yaml.safe_dump({"clusters": [{"name": "default", "cluster": {"server": "https://127.0.0.1:6443"}}]})
    )
    target = tmp_path / "out.yaml"
    setup.rewrite_kubeconfig(source, "https://k3s:6443", target)
    assert yaml.safe_load(target.read_text())["clusters"][0]["cluster"]["server"] == "https://k3s:6443"
