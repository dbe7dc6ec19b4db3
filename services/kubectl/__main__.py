"""``kubectl certcheck`` (the executable ``kubectl-certcheck``, which kubectl finds on PATH):

    kubectl certcheck list [-n NAMESPACE] [--state S,...] [--days N] [-o table|wide|json|yaml]
    kubectl certcheck describe NAMESPACE/SECRET
    kubectl certcheck check FILE|- [--threshold DAYS] [--password P] [-o ...]

It reads, through the user's kubeconfig and RBAC: CertChecks and ClusterCertChecks (their statuses),
Secrets' metadata (never their data) and Events. ``check`` needs no cluster; it exits 1 when a
certificate is not Valid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from schemas import annotations as ann
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION
from services.domain.clusterchecks import PLURAL as CLUSTER_PLURAL
from services.kubectl.check import check, render_check
from services.kubectl.inventory import Inventory, render, selected, table, urgency

# Secrets as metadata only: the API server sends no data, whatever the user may read.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ONE = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
OUTPUTS = ("table", "wide", "json", "yaml")


def _api(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not (kubeconfig or os.environ.get("KUBECONFIG")):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    return client.ApiClient(configuration)


def _get(api: client.ApiClient, path: str, accept: str) -> Any:
    """A GET with its own Accept header (the generated client cannot ask for metadata only)."""
    headers = {"Accept": accept}
    api.update_params_for_auth(headers, [], ["BearerToken"], path, "GET", None)
    response = api.rest_client.pool_manager.request(
        "GET", api.configuration.host + path, headers=headers, preload_content=False, timeout=30
    )
    try:
        data = response.data
    finally:
        response.release_conn()
    if response.status >= 300:
        raise ApiException(status=response.status, reason=data[:200].decode(errors="replace"))
    return json.loads(data)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _statuses(api: client.ApiClient, namespace: str | None, inventory: Inventory) -> None:
    custom = client.CustomObjectsApi(api)
    try:
        found: Any
        if namespace:
            found = custom.list_namespaced_custom_object(
                CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL
            )
        else:
            found = custom.list_cluster_custom_object(CERTCHECK_GROUP, CERTCHECK_VERSION, CERTCHECK_PLURAL)
        for item in found.get("items", []):
            inventory.add_status(item)
    except ApiException as exc:
        _warn(f"cannot list CertChecks (HTTP {exc.status})")
    try:
        clusters: Any = custom.list_cluster_custom_object(CERTCHECK_GROUP, CERTCHECK_VERSION, CLUSTER_PLURAL)
        for item in clusters.get("items", []):
            inventory.add_status(item, cluster=True)
    except ApiException as exc:
        if exc.status != 404:  # 404: no ClusterCertCheck CRD (an older install)
            _warn(f"cannot list ClusterCertChecks (HTTP {exc.status})")


def _annotated(api: client.ApiClient, namespace: str | None, inventory: Inventory) -> None:
    path = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
    try:
        for item in _get(api, path, METADATA_ONLY).get("items", []):
            inventory.add_annotated(item)
    except ApiException as exc:
        _warn(f"cannot list Secrets (HTTP {exc.status}): only the certificates the statuses list are shown")


def list_command(api: client.ApiClient, args: argparse.Namespace, now: datetime) -> int:
    inventory = Inventory()
    _statuses(api, args.namespace, inventory)
    _annotated(api, args.namespace, inventory)
    states = [s.strip() for s in (args.state or "").split(",") if s.strip()]
    rows = selected(inventory.sorted(), now, args.namespace, states, args.days)
    print(render(rows, args.output, now))
    if args.output in ("table", "wide") and inventory.omitted:
        print(
            f"({inventory.omitted} less urgent certificates are only counted in the statuses)",
            file=sys.stderr,
        )
    return 0


def describe_command(api: client.ApiClient, args: argparse.Namespace, now: datetime) -> int:
    namespace, _, name = args.secret.partition("/")
    if not namespace or not name:
        print("describe takes NAMESPACE/SECRET", file=sys.stderr)
        return 2
    try:
        secret = _get(api, f"/api/v1/namespaces/{namespace}/secrets/{name}", METADATA_ONE)
    except ApiException as exc:
        print(f"cannot read Secret {namespace}/{name} (HTTP {exc.status})", file=sys.stderr)
        return 1
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    inventory = Inventory()
    _statuses(api, namespace, inventory)
    rows = [
        r for r in inventory.sorted() if r.namespace == namespace and r.kind == "Secret" and r.name == name
    ]
    checked_by = annotations.get(ann.CHECKED_BY, "")
    lines = [
        f"Secret:       {namespace}/{name}",
        f"State:        {annotations.get(ann.STATE, '(not covered by any CertCheck)')}",
        f"Not after:    {annotations.get(ann.NOT_AFTER, '-')}",
        f"Checked by:   {checked_by.replace(',', ', ') or '-'}",
        f"Problems:     {annotations.get(ann.PROBLEMS, '-')}",
        "Certificates:",
    ]
    if rows:
        body = table(
            ["KEY", "INDEX", "STATE", "DAYS", "NOT AFTER", "SUBJECT", "ISSUER"],
            [
                [
                    r.key,
                    str(r.index),
                    r.state,
                    str(r.days_remaining(now) if r.not_after else "-"),
                    r.not_after or "-",
                    r.subject or "-",
                    r.issuer or "-",
                ]
                for r in rows
            ],
        )
        lines += [f"  {line}" for line in body.splitlines()]
    else:
        lines.append("  (no status lists them: less urgent than those shown, or not covered)")
    lines.append("Events:")
    lines += [f"  {line}" for line in _events(api, namespace, name).splitlines()]
    lines.append(f"History:      certcheck history {namespace}/{name} (the public expiry events)")
    print("\n".join(lines))
    return 0


def _events(api: client.ApiClient, namespace: str, name: str) -> str:
    try:
        found = client.CoreV1Api(api).list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind=Secret,involvedObject.name={name}"
        )
    except ApiException as exc:
        return f"(cannot list Events: HTTP {exc.status})"
    events = sorted(
        found.items, key=lambda e: e.last_timestamp or e.event_time or datetime.min.replace(tzinfo=UTC)
    )
    if not events:
        return "(none)"
    return table(
        ["LAST SEEN", "TYPE", "REASON", "COUNT", "MESSAGE"],
        [
            [
                str(e.last_timestamp or e.event_time or "-"),
                e.type or "-",
                e.reason or "-",
                str(e.count or 1),
                (e.message or "")[:160],
            ]
            for e in events
        ],
    )


def check_command(args: argparse.Namespace, now: datetime) -> int:
    if args.file == "-":
        value, name = sys.stdin.buffer.read(), args.key or "stdin"
    else:
        path = Path(args.file)
        try:
            value = path.read_bytes()
        except OSError as exc:
            print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        name = args.key or path.name
    password = args.password.encode() if args.password is not None else None
    rows = sorted(check(name, value, now, args.threshold, password), key=urgency)
    print(render_check(rows, args.output, now))
    return 0 if all(row.state == "Valid" for row in rows) else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubectl certcheck", description="The certificates certcheck watches.")
    top.add_argument("--kubeconfig", help="the kubeconfig to use (default: $KUBECONFIG, ~/.kube/config)")
    top.add_argument("--context", help="the kubeconfig context to use")
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every certificate, most urgent first")
    listing.add_argument("-n", "--namespace", help="only this namespace (default: every namespace)")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    listing.add_argument("--state", help="only these states, comma-separated (e.g. Expired,ExpiringSoon)")
    listing.add_argument("--days", type=int, help="only those expiring within this many days (expired too)")
    listing.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    describe = commands.add_parser("describe", help="one Secret: its certificates, CertChecks and Events")
    describe.add_argument("secret", metavar="NAMESPACE/SECRET")
    checking = commands.add_parser("check", help="evaluate a local file (PEM, DER, PKCS#12, JKS, kubeconfig)")
    checking.add_argument("file", metavar="FILE|-")
    checking.add_argument("--threshold", type=int, default=30, help="days before notAfter (default 30)")
    checking.add_argument("--password", help="the keystore's password")
    checking.add_argument("--key", help="read the value as this data key would be (e.g. keystore.p12)")
    checking.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    now = datetime.now(UTC)
    if args.command == "check":
        sys.exit(check_command(args, now))
    api = _api(args.kubeconfig, args.context)
    command = list_command if args.command == "list" else describe_command
    sys.exit(command(api, args, now))


if __name__ == "__main__":
    main()
