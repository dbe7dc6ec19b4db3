"""What a service process leaves out (services/imports.py): each check runs in a fresh interpreter, as a
service starts, since this test process has long imported whatever it likes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("aiohttp", "kubernetes.config.kube_config", "requests", "oauthlib", "pydantic", "websocket")


def imported_by(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter holds after running ``code``."""
    report = f"print(json.dumps({{m: sys.modules.get(m) is not None for m in {HEAVY!r}}}))"
    probe = f"{code}\nimport json, sys\n{report}"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("service", ["watcher", "evaluator", "recorder", "notifier", "exporter", "allinone"])
def test_a_service_imports_neither_aiohttp_nor_the_kubeconfig_loader_nor_the_rest_of_the_kubernetes_package(
    service: str,
) -> None:
    module = "services.allinone" if service == "allinone" else f"services.{service}.__main__"
    assert imported_by(f"import {module}") == dict.fromkeys(HEAVY, False)


def test_in_a_cluster_the_api_client_loads_without_the_kubeconfig_loader() -> None:
    code = (
        "import os\n"
        "from unittest import mock\n"
        "from services.common import kube\n"
        "os.environ['KUBERNETES_SERVICE_HOST'] = '10.0.0.1'\n"
        "with mock.patch.object(kube, 'load_incluster_config') as load:\n"
        "    kube.api_client()\n"
        "assert load.called\n"
    )
    assert imported_by(code)["kubernetes.config.kube_config"] is False


def test_a_kubeconfig_file_is_still_loaded_with_the_kubeconfig_loader(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    code = (
        "from services.common import kube\n"
        f"api = kube.api_client({str(kubeconfig)!r})\n"
        "assert api.configuration.host == 'https://127.0.0.1:6443', api.configuration.host\n"
    )
    assert imported_by(code)["kubernetes.config.kube_config"] is True


def test_code_that_reads_the_kubernetes_package_itself_still_finds_all_of_it() -> None:
    # The kubectl plugin (and any library) reads names the package's __init__ defines: it runs then.
    code = (
        "import services\n"
        "import kubernetes\n"
        "from kubernetes import client, config\n"
        "assert callable(config.load_kube_config) and client.ApiClient\n"
        "assert kubernetes.__version__\n"
    )
    assert imported_by(code)["kubernetes.config.kube_config"] is True


def test_a_deferred_package_runs_its_init_only_when_a_name_it_defines_is_read(tmp_path: Path) -> None:
    package = tmp_path / "deferred_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.modules['heavy_marker'] = sys\nNAME = 'init ran'\n")
    (package / "sub.py").write_text("VALUE = 1\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from services.imports import defer_package_init, loaded\n"
        "defer_package_init('deferred_pkg')\n"
        "import deferred_pkg.sub\n"
        "from deferred_pkg import sub\n"
        "assert sub.VALUE == 1 and 'heavy_marker' not in sys.modules\n"
        "import deferred_pkg\n"
        "assert not loaded(deferred_pkg)\n"
        "assert deferred_pkg.NAME == 'init ran' and 'heavy_marker' in sys.modules and loaded(deferred_pkg)\n"
        "try:\n"
        "    deferred_pkg.missing\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('a missing name must still raise')\n"
    )
    imported_by(code)
