"""Prometheus metrics: per-certificate series that appear and disappear with their objects, exposed once,
and valid for Prometheus's own tools."""

from __future__ import annotations

import subprocess
import urllib.request

from devcluster import binaries
from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import Stack
from tests.conftest import Cluster, wait_for


def scrape(stack: Stack, service: str = "exporter") -> str:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.http_ports[service]}/metrics", timeout=10
    ) as response:
        return str(response.read().decode())


def series(text: str, name: str, **labels: str) -> dict[str, float]:
    """Sample lines of a metric whose labels include all of ``labels``: {line: value}."""
    found = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            head, value = line.rsplit(" ", 1)
            found[head] = float(value)
    return found


def test_certificate_series_appear_with_their_values_and_disappear_with_their_secret(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(10, "metrics.test")
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "m"}})
    text = wait_for(
        lambda: (
            (t := scrape(stack))
            and series(t, "certcheck_certificate_expiring", secret_namespace=namespace)
            and t
        ),
        what="series for the certificate",
    )
    labels = {
        "secret_namespace": namespace,
        "secret_name": "s",
        "secret_key": "tls.crt",
        "chain_index": "0",
        "certcheck": "c",
        "subject_CN": "metrics.test",
    }
    assert list(series(text, "certcheck_certificate_expiring", **labels).values()) == [1.0]
    assert list(series(text, "certcheck_certificate_expired", **labels).values()) == [0.0]
    [not_after] = series(text, "certcheck_certificate_not_after_timestamp_seconds", **labels).values()
    status = wait_for(lambda: cluster.status(namespace, "c").get("certificates"), what="the status")
    status_not_after = status[0]["notAfter"]
    from datetime import datetime

    assert not_after == datetime.fromisoformat(status_not_after).timestamp()
    counts = series(text, "certcheck_certcheck_certificates", certcheck_namespace=namespace, certcheck="c")
    assert {head.split('state="')[1].rstrip('"}'): value for head, value in counts.items()} == {
        "Valid": 0.0,
        "ExpiringSoon": 1.0,
        "Expired": 0.0,
        "NotYetValid": 0.0,
        "Invalid": 0.0,
        "RenewalOverdue": 0.0,
    }

    cluster.core.delete_namespaced_secret("s", namespace)
    wait_for(
        lambda: not series(scrape(stack), "certcheck_certificate_expiring", secret_namespace=namespace),
        what="the series to disappear",
    )
    cluster.custom.delete_namespaced_custom_object("certcheck.dev", "v1alpha1", namespace, "certchecks", "c")
    wait_for(
        lambda: not series(scrape(stack), "certcheck_certcheck_targets", certcheck_namespace=namespace),
        what="the CertCheck's series to disappear",
    )


def test_two_certchecks_on_one_secret_never_give_the_same_label_set(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    leaf, key = expiring_in(10, "leaf.test")
    intermediate, _ = expiring_in(300, "intermediate.test")
    cluster.create_tls_secret(namespace, "chain", leaf + intermediate, key, labels={"app": "x", "team": "t"})
    cluster.create_certcheck(namespace, "by-app", {"matchLabels": {"app": "x"}})
    cluster.create_certcheck(namespace, "by-team", {"matchLabels": {"team": "t"}}, threshold=5)
    text = wait_for(
        lambda: (
            (t := scrape(stack))
            and len(series(t, "certcheck_certificate_expired", secret_namespace=namespace)) == 4
            and t
        ),
        what="2 certificates x 2 CertChecks",
    )
    heads = [
        line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("certcheck_certificate_")
    ]
    assert len(heads) == len(set(heads))
    expiring = series(
        text, "certcheck_certificate_expiring", secret_namespace=namespace, subject_CN="leaf.test"
    )
    assert sorted(expiring.values()) == [0.0, 1.0]  # 10 days: inside 30 (by-app), outside 5 (by-team)


def test_invalid_entries_have_an_error_series_with_the_reason(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(10)
    data = tls_secret_data(cert, key)
    data["tls.crt"] = "bm90IGEgY2VydA=="  # "not a cert"
    from kubernetes import client

    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="broken", labels={"app": "b"}),
            type="kubernetes.io/tls",
            data=data,
        ),
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "b"}})
    errors = wait_for(
        lambda: series(scrape(stack), "certcheck_certificate_error", secret_namespace=namespace),
        what="the error series",
    )
    [(head, value)] = errors.items()
    assert value == 1.0 and 'reason="no certificate in key tls.crt (not PEM, DER or PKCS#12)"' in head


def test_every_endpoint_passes_promtool_check_metrics(cluster: Cluster, namespace: str, stack: Stack) -> None:
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "p"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "p"}})
    wait_for(
        lambda: series(scrape(stack), "certcheck_certificate_expiring", secret_namespace=namespace),
        what="series",
    )
    _, promtool = binaries.prometheus_tools()
    for service in ("watcher", "evaluator", "recorder", "notifier", "exporter"):
        text = scrape(stack, service)
        result = subprocess.run(
            [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{service}: {result.stdout}{result.stderr}"
