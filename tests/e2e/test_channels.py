"""Alertmanager, PagerDuty and Microsoft Teams, end to end: one CertCheck with a target of each, a
certificate entering ExpiringSoon and then replaced; each receiver (a local stand-in) gets what the real
service expects, credentials read from opted-in Secrets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kubernetes import client

from devcluster.certs import expiring_in, tls_secret_data
from schemas.annotations import CREDENTIAL_LABEL
from services.domain.times import parse_rfc3339
from tests.conftest import Cluster, wait_for
from tests.receivers import Receiver, Reply


@pytest.fixture
def alertmanager() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def teams() -> Iterator[Receiver]:
    receiver = Receiver(Reply(202))
    yield receiver
    receiver.close()


def test_alertmanager_pagerduty_and_teams_are_told_and_the_first_two_told_of_the_resolution(
    cluster: Cluster, namespace: str, alertmanager: Receiver, teams: Receiver, pagerduty: Receiver
) -> None:
    routing_key = f"routing-{namespace}"
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="oncall", labels={CREDENTIAL_LABEL: "true"}),
            string_data={
                "routing-key": routing_key,
                "teams-url": f"{teams.url}/workflows/{namespace}?sig=s3",
            },
        ),
    )
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "web", cert, key, labels={"app": "web"})
    notification = {
        "targets": [
            {"name": "am", "alertmanager": {"url": alertmanager.url, "labels": {"team": "shop"}}},
            {"name": "pd", "pagerduty": {"routingKeySecretRef": {"name": "oncall", "key": "routing-key"}}},
            {"name": "chat", "teams": {"urlSecretRef": {"name": "oncall", "key": "teams-url"}}},
        ]
    }
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "web"}}, notification=notification)

    def ours(receiver: Receiver) -> list[object]:
        return [r for r in receiver.accepted() if namespace in r.body.decode()]

    [posted] = wait_for(lambda: ours(alertmanager), what="the alert")
    assert posted.path == "/api/v2/alerts"
    [alert] = posted.json()
    assert alert["labels"]["state"] == "ExpiringSoon" and alert["labels"]["team"] == "shop"
    assert alert["labels"]["namespace"] == namespace and alert["labels"]["secret"] == "web"
    assert parse_rfc3339(alert["endsAt"]) > datetime.now(UTC)  # fires until posted again or resolved

    [triggered] = wait_for(lambda: ours(pagerduty), what="the PagerDuty trigger")
    event = triggered.json()
    assert (event["routing_key"], event["event_action"]) == (routing_key, "trigger")
    assert event["payload"]["custom_details"]["namespace"] == namespace

    [card] = wait_for(
        lambda: [r for r in teams.accepted() if r.path == f"/workflows/{namespace}?sig=s3"], what="the card"
    )
    assert card.json()["attachments"][0]["content"]["type"] == "AdaptiveCard"

    renewed, renewed_key = expiring_in(200)
    cluster.core.patch_namespaced_secret("web", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    resolved = wait_for(lambda: ours(alertmanager)[1:], what="the resolution")[0].json()[0]
    assert resolved["labels"]["state"] == "ExpiringSoon"
    assert parse_rfc3339(resolved["endsAt"]) <= datetime.now(UTC)
    resolve = wait_for(lambda: ours(pagerduty)[1:], what="the PagerDuty resolve")[0].json()
    assert (resolve["event_action"], resolve["dedup_key"]) == ("resolve", event["dedup_key"])
