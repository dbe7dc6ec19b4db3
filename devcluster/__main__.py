"""``make up``: start the whole system locally and keep it running until Ctrl-C.

python -m devcluster [--no-demo] [--split] [--state-dir .certcheck]

certcheck runs as one process (``certcheck all``, as k8s/overlays/small deploys it); ``--split`` starts
the five services as five processes instead, as the production deployment runs them.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from devcluster.cluster import die_with_parent
from devcluster.demo import NAMESPACE, create_demo
from devcluster.stack import REPO, Stack, api_client


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=REPO / ".certcheck")
    parser.add_argument("--no-demo", action="store_true", help="do not create the demo objects")
    parser.add_argument("--split", action="store_true", help="one process per service")
    args = parser.parse_args(argv)
    # A fresh cluster each time: etcd and JetStream state from an earlier run would not match.
    shutil.rmtree(args.state_dir, ignore_errors=True)
    stack = Stack(args.state_dir, all_in_one=not args.split)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    die_with_parent(signal.SIGTERM)  # `make` killed: stop everything as on Ctrl-C
    try:
        print(
            "starting etcd, kube-apiserver and nats-server (the first run builds kube-apiserver)...",
            flush=True,
        )
        stack.start_infrastructure()
        stack.start_services()
        if not args.no_demo:
            create_demo(api_client(stack.control_plane.kubeconfig))
        # A stable, known path for the kubeconfig, whatever the layout of the state directory.
        kubeconfig = args.state_dir / "kubeconfig"
        shutil.copyfile(stack.control_plane.kubeconfig, kubeconfig)
        kubeconfig.chmod(0o600)
        print(
            f"""
certcheck is running.
  kube-apiserver  {stack.control_plane.url}
  nats-server     {stack.nats.address} (admin: {stack.nats.url}; each process has its own user)
  kubeconfig      {kubeconfig}
  metrics         {", ".join(f"{n}: http://127.0.0.1:{p}/metrics" for n, p in stack.http_ports.items())}
  logs            {args.state_dir / "logs"}

Try:
  export KUBECONFIG={kubeconfig}
  kubectl get certchecks -A{
                ""
                if args.no_demo
                else f'''
  kubectl -n {NAMESPACE} get certcheck demo -o yaml
  kubectl -n {NAMESPACE} get events'''
            }

Press Ctrl-C to stop everything.""",
            flush=True,
        )
        while not stopping:
            for name, process in stack.services.items():
                if not process.running:
                    print(f"service {name} exited; see {process.log_path}", file=sys.stderr, flush=True)
                    stopping = True
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        stack.stop()


if __name__ == "__main__":
    main()
