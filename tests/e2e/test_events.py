"""Events operators can act on: one per state change, Normal ones for good news, repeats aggregated."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from devcluster.stack import Stack
from schemas import subjects
from schemas.messages import EvaluationResult, result_decoder
from schemas.streams import RESULTS
from tests.conftest import Cluster, last_message, wait_for, wait_settled


def reasons(cluster: Cluster, namespace: str, kind: str, name: str) -> list[tuple[str, str, int]]:
    return sorted((e.type, e.reason, e.count) for e in cluster.events(namespace, kind, name))


def last_result(stack: Stack, namespace: str, name: str) -> EvaluationResult | None:
    msg = last_message(stack, RESULTS.name, subjects.result_subject(namespace, name))
    result = result_decoder.decode(msg.data) if msg else None
    return result if isinstance(result, EvaluationResult) else None


def published_not_after(stack: Stack, namespace: str, name: str) -> str | None:
    result = last_result(stack, namespace, name)
    entries = result.status.certificates if result else []
    return entries[0].not_after if entries else None


def set_threshold(cluster: Cluster, namespace: str, name: str, days: int) -> None:
    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", name, {"spec": {"threshold": days}}
    )


def test_a_renewal_before_the_expiring_state_was_written_still_gives_renewed_events(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    # Nothing is written: the evaluator sees neither the status nor the annotations of its first evaluation.
    stack.services["recorder"].stop()
    try:
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5)
        cert, key = make_cert("early.test", soon)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
        cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
        wait_for(lambda: published_not_after(stack, namespace, "c"), what="the expiring result")
        later = soon + timedelta(days=200)
        renewed, renewed_key = make_cert("early.test", later)
        cluster.core.patch_namespaced_secret("s", namespace, {"data": tls_secret_data(renewed, renewed_key)})
        wait_for(
            lambda: published_not_after(stack, namespace, "c") == later.strftime("%Y-%m-%dT%H:%M:%SZ"),
            what="the renewed result",
        )
    finally:
        stack.start_service("recorder", stack.extra_env.get("recorder", {}))
    # The queued Events are written side by side, in no particular order.
    wait_for(
        lambda: (
            reasons(cluster, namespace, "CertCheck", "c")
            == [("Normal", "Renewed", 1), ("Warning", "ExpiringSoon", 1)]
        ),
        what="ExpiringSoon and Renewed on the CertCheck",
    )
    wait_for(
        lambda: (
            reasons(cluster, namespace, "Secret", "s")
            == [("Normal", "Renewed", 1), ("Warning", "ExpiringSoon", 1)]
        ),
        what="ExpiringSoon and Renewed on the Secret",
    )


def test_renewal_gives_a_normal_renewed_event(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(
        lambda: reasons(cluster, namespace, "Secret", "s") == [("Warning", "ExpiringSoon", 1)],
        what="ExpiringSoon",
    )
    renewed, renewed_key = expiring_in(200)
    cluster.core.patch_namespaced_secret("s", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(lambda: ("Normal", "Renewed", 1) in reasons(cluster, namespace, "Secret", "s"), what="Renewed")
    wait_for(
        lambda: ("Normal", "Renewed", 1) in reasons(cluster, namespace, "CertCheck", "c"),
        what="Renewed on the CertCheck",
    )


def test_a_state_that_comes_back_aggregates_into_the_same_event(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(20)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}}, threshold=30)
    wait_for(
        lambda: reasons(cluster, namespace, "Secret", "s") == [("Warning", "ExpiringSoon", 1)],
        what="ExpiringSoon once",
    )
    set_threshold(cluster, namespace, "c", 10)
    wait_for(
        lambda: ("Normal", "Recovered", 1) in reasons(cluster, namespace, "Secret", "s"), what="Recovered"
    )
    set_threshold(cluster, namespace, "c", 30)
    wait_for(
        lambda: ("Warning", "ExpiringSoon", 2) in reasons(cluster, namespace, "Secret", "s"),
        what="the same ExpiringSoon Event counted twice",
    )
    assert len(cluster.events(namespace, "Secret", "s")) == 2  # ExpiringSoon (count 2) and Recovered
    assert {e.reporting_component for e in cluster.events(namespace, "Secret", "s")} == {
        "certcheck.dev/recorder"
    }


def test_an_unreadable_certificate_is_invalid_with_the_reason(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "Valid", what="Valid")
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    cluster.core.patch_namespaced_secret(
        "s", namespace, {"data": {"tls.crt": base64.b64encode(garbage).decode()}}
    )
    status: dict[str, Any] = cluster.wait_status(namespace, "c", invalidCount=1)
    [entry] = status["certificates"]
    assert entry["state"] == "Invalid" and entry["reason"].startswith("malformed certificate")
    invalid = next(c for c in status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and "s/tls.crt[0]" in invalid["message"]
    wait_for(
        lambda: ("Warning", "Invalid", 1) in reasons(cluster, namespace, "Secret", "s"), what="Invalid Event"
    )


def test_status_lists_dns_names_and_when_it_was_evaluated(cluster: Cluster, namespace: str) -> None:
    from datetime import UTC, datetime, timedelta

    cert, key = make_cert(
        "web.test", datetime.now(UTC) + timedelta(days=60), dns_names=("web.test", "www.web.test")
    )
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    status = wait_for(lambda: (s := cluster.status(namespace, "c")).get("certificates") and s, what="status")
    assert status["certificates"][0]["dnsNames"] == ["web.test", "www.web.test"]
    evaluated = datetime.fromisoformat(status["lastEvaluationTime"])
    assert abs(datetime.now(UTC) - evaluated) < timedelta(seconds=30)


def without_event_writes(api: client.ApiClient, role: str) -> list[Any]:
    """Take the ``events`` rule out of a ClusterRole (an RBAC change gone wrong); returns the old rules."""
    rbac = client.RbacAuthorizationV1Api(api)
    current = rbac.read_cluster_role(role)
    rules = [r for r in current.rules if "events" not in (r.resources or [])]
    rbac.patch_cluster_role(role, {"rules": [api.sanitize_for_serialization(r) for r in rules]})
    return [api.sanitize_for_serialization(r) for r in current.rules]


def test_an_event_that_could_not_be_written_is_written_once_the_failure_clears(
    cluster: Cluster, namespace: str, api: client.ApiClient
) -> None:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "Valid", what="Valid")

    rules = without_event_writes(api, "certcheck-recorder")
    try:
        soon, soon_key = expiring_in(5)
        cluster.core.patch_namespaced_secret("s", namespace, {"data": tls_secret_data(soon, soon_key)})
        wait_for(
            lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "ExpiringSoon",
            what="the state recorded while Events are refused",
        )
        # A newer result for the CertCheck replaces the one that carried the change.
        other, other_key = expiring_in(200)
        cluster.create_tls_secret(namespace, "t", other, other_key, labels={"app": "x"})
        wait_for(
            lambda: cluster.status(namespace, "c").get("targetSecretsCount") == 2, what="the newer result"
        )
        assert cluster.events(namespace, "Secret", "s") == []
    finally:
        client.RbacAuthorizationV1Api(api).patch_cluster_role("certcheck-recorder", {"rules": rules})

    wait_for(
        lambda: reasons(cluster, namespace, "Secret", "s") == [("Warning", "ExpiringSoon", 1)],
        timeout=40,
        what="the Event written once the failure cleared",
    )
    wait_for(
        lambda: ("Warning", "ExpiringSoon", 1) in reasons(cluster, namespace, "CertCheck", "c"),
        what="the CertCheck's Event too",
    )


def test_annotations_deleted_by_hand_come_back_without_counting_the_event_again(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(
        lambda: reasons(cluster, namespace, "Secret", "s") == [("Warning", "ExpiringSoon", 1)],
        what="ExpiringSoon",
    )
    wait_for(lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state"), what="annotations")
    ours = [k for k in cluster.annotations(namespace, "s") if k.startswith("certcheck.dev/")]
    cluster.core.patch_namespaced_secret("s", namespace, {"metadata": {"annotations": dict.fromkeys(ours)}})
    wait_for(
        lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "ExpiringSoon",
        what="the annotations put back",
    )
    wait_settled(stack, cluster, namespace)
    assert reasons(cluster, namespace, "Secret", "s") == [("Warning", "ExpiringSoon", 1)]


def test_a_mass_rotation_writes_every_warning_a_burst_of_renewed_events_and_summaries_counting_all(
    stack: Stack, cluster: Cluster, namespace: str
) -> None:
    count = 40  # beyond the recorder's default budget of 25 routine Secret Events per namespace
    cert, key = expiring_in(10)
    for index in range(count):
        cluster.create_tls_secret(namespace, f"s{index:02d}", cert, key, labels={"app": "rot"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "rot"}})

    def secret_events(reason: str) -> list[Any]:
        return [e for e in cluster.events(namespace, "Secret") if e.reason == reason]

    wait_for(lambda: len(secret_events("ExpiringSoon")) == count, what="every Warning written")
    renewed, renewed_key = expiring_in(300)
    for index in range(count):
        cluster.core.patch_namespaced_secret(
            f"s{index:02d}", namespace, {"data": tls_secret_data(renewed, renewed_key)}
        )
    wait_for(
        lambda: all(
            cluster.annotations(namespace, f"s{index:02d}").get("certcheck.dev/state") == "Valid"
            for index in range(count)
        ),
        what="every Secret Valid",
    )

    def summaries() -> list[Any]:
        return [e for e in cluster.events(namespace, "CertCheck", "c") if e.reason == "Renewed"]

    try:
        wait_for(
            lambda: sum(int(e.message.split(" ", 1)[0]) for e in summaries()) == count,
            what="the CertCheck's Renewed summaries counting all",
        )
    except AssertionError as exc:  # what they counted, to tell a summary lost from one doubled
        seen = [(e.count, e.message[:80]) for e in summaries()]
        raise AssertionError(f"{exc}; the summaries (count, message): {seen}") from exc
    wait_settled(stack, cluster, namespace)
    assert 25 <= len(secret_events("Renewed")) < count
    assert len(secret_events("ExpiringSoon")) == count
