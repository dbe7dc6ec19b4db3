"""Alertmanager, PagerDuty, Microsoft Teams and e-mail, end to end: one CertCheck with a target of each, a
certificate entering ExpiringSoon and then replaced; each receiver (a local stand-in) gets what the real
service expects, credentials read from opted-in Secrets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kubernetes import client

from devcluster.certs import expiring_in, make_cert, tls_secret_data
from schemas.annotations import CREDENTIAL_LABEL
from services.domain.times import parse_rfc3339
from tests.conftest import Cluster, wait_for
from tests.receivers import Receiver, Reply
from tests.smtp import SmtpServer


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


def test_an_email_goes_out_once_per_change_through_the_notifier(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    server = SmtpServer(tmp_path, tls=False)  # STARTTLS and AUTH: tests/unit/test_notifier_email.py
    try:
        cert, key = expiring_in(-1)
        cluster.create_tls_secret(namespace, "web", cert, key, labels={"app": "web"})
        mail = {"to": ["ops@example.com"], "from": "certcheck@example.com", "host": "127.0.0.1"}
        notification = {
            "targets": [{"name": "mail", "email": {**mail, "port": server.port, "startTLS": False}}]
        }
        cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "web"}}, notification=notification)
        [(_, recipients, message)] = wait_for(
            lambda: [m for m in server.mailbox.messages if namespace in str(m[2]["Subject"])],
            what="the e-mail",
        )
        assert recipients == ["ops@example.com"]
        assert message["Subject"] == f"certcheck: 1 certificate in {namespace} (Expired)"
        assert message.is_multipart()
    finally:
        server.close()


def test_a_reminder_comes_at_its_mark_before_not_after_by_a_schedule_and_once(
    cluster: Cluster, namespace: str, alertmanager: Receiver
) -> None:
    webhook = alertmanager  # any receiver: the target is a plain webhook
    due_in = 8.0
    cert, key = make_cert("web.test", datetime.now(UTC) + timedelta(days=1, seconds=due_in))
    cluster.create_tls_secret(namespace, "web", cert, key, labels={"app": "web"})
    target = {"name": "remind", "webhook": {"url": f"{webhook.url}/hook"}, "remindAt": ["1d", "30d"]}
    started = time.monotonic()
    cluster.create_certcheck(
        namespace, "c", {"matchLabels": {"app": "web"}}, threshold=0, notification={"targets": [target]}
    )
    [first] = wait_for(lambda: webhook.accepted(), what="the 30d reminder")  # passed already: told at once
    assert [(c["change"], c["state"]) for c in first.json()["certificates"]] == [("reminder", "Valid")]
    assert time.monotonic() - started < due_in, "the test machine was too slow to tell the marks apart"
    [second] = wait_for(lambda: webhook.accepted()[1:], timeout=30, what="the 1d reminder")
    assert time.monotonic() - started >= due_in - 1  # not before its mark: at the scheduled evaluation
    assert second.json()["certificates"][0]["change"] == "reminder"
    time.sleep(3)
    assert len(webhook.accepted()) == 2  # each mark told once
