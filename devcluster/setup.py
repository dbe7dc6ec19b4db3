"""One-shot set-up for docker-compose: point a kubeconfig at the k3s container, apply the CRD, create
the demo objects. ``python -m devcluster.setup --kubeconfig IN --server URL --write OUT --crd PATH``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from devcluster.demo import create_demo
from devcluster.stack import api_client, apply_crd


def rewrite_kubeconfig(source: Path, server: str, target: Path) -> None:
    """The kubeconfig k3s writes names 127.0.0.1; the services reach the server by its service name."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = server
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o644)  # read by the services' non-root user; a development cluster's admin config


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear within {timeout}s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="the kubeconfig k3s wrote")
    parser.add_argument("--server", required=True, help="the API server URL the services use")
    parser.add_argument("--write", type=Path, required=True, help="where to write their kubeconfig")
    parser.add_argument("--crd", type=Path, required=True, help="k8s/base/crd.yaml")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo namespace and objects")
    args = parser.parse_args(argv)
    wait_for(args.kubeconfig)
    rewrite_kubeconfig(args.kubeconfig, args.server, args.write)
    api = api_client(args.write)
    apply_crd(api, args.crd, timeout=120)
    print(f"applied {args.crd}")
    if not args.no_demo:
        create_demo(api)
        print("created the demo namespace, Secrets and CertCheck")


if __name__ == "__main__":
    main()
