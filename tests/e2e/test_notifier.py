"""Notifications: once per change per target, retried through outages, never leaking a token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats
import pytest
from kubernetes import client
from nats.js.errors import KeyWrongLastSequenceError

from devcluster.certs import expiring_in
from devcluster.stack import Stack
from schemas.annotations import CREDENTIAL_LABEL
from schemas.messages import ExpiryNotification, encoder
from schemas.streams import NOTIFIER_STATE_BUCKET
from services.domain.times import rfc3339
from services.notifier import core
from services.notifier.core import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from tests.conftest import Cluster, wait_for, wait_settled
from tests.receivers import Receiver, Reply

TOKEN = "xoxb-certcheck-test-token-7f3a9c"
CREDENTIAL = {CREDENTIAL_LABEL: "true"}  # the opt-in a Secret needs to be used as a credential
SIGNING_SECRET = "whsec-certcheck-signing-4b1d"


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def create_credentials(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="alerting", labels=CREDENTIAL),
            string_data={"slack-token": TOKEN, "signing": SIGNING_SECRET},
        ),
    )
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hook-headers", labels=CREDENTIAL),
            string_data={"Authorization": "Bearer hook-auth"},
        ),
    )


def targets(namespace: str, webhook_url: str, **webhook_options: Any) -> dict[str, Any]:
    return {
        "targets": [
            {
                "name": "team-slack",
                "slack": {"channel": namespace, "tokenSecretRef": {"name": "alerting", "key": "slack-token"}},
            },
            {
                "name": "hook",
                "webhook": {
                    "url": f"{webhook_url}/certcheck",
                    "signingSecretRef": {"name": "alerting", "key": "signing"},
                    "headersSecretRef": {"name": "hook-headers"},
                },
                **webhook_options,
            },
        ]
    }


def slack_messages(slack: Receiver, namespace: str) -> list[dict[str, Any]]:
    return [r.json() for r in slack.accepted() if r.json().get("channel") == namespace]


def notified_certs(requests: list[Any]) -> list[tuple[str, str]]:
    return sorted((c["secret"], c["state"]) for r in requests for c in r.json()["certificates"])


def notification_failed(cluster: Cluster, namespace: str, name: str, timeout: float = 40) -> dict[str, Any]:
    """The CertCheck's NotificationFailed condition, once it is True."""
    return wait_for(
        lambda: next(
            (
                c
                for c in cluster.status(namespace, name).get("conditions", [])
                if c["type"] == "NotificationFailed" and c["status"] == "True"
            ),
            None,
        ),
        timeout=timeout,
        what="NotificationFailed",
    )


def test_expiring_and_expired_give_one_slack_message_and_one_signed_webhook(
    cluster: Cluster, namespace: str, stack: Stack, slack: Receiver, webhook: Receiver
) -> None:
    create_credentials(cluster, namespace)
    for name, days in (("soon", 10), ("gone", -1), ("fine", 300)):
        cert, key = expiring_in(days, f"{name}.test")
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "n"})
    cluster.create_certcheck(
        namespace, "c", {"matchLabels": {"app": "n"}}, notification=targets(namespace, webhook.url)
    )

    [message] = wait_for(lambda: slack_messages(slack, namespace), what="the Slack message")
    [request] = wait_for(lambda: webhook.accepted(), what="the webhook")
    wait_settled(stack, cluster, namespace)  # every result handled, those the writes bring back too
    assert len(slack_messages(slack, namespace)) == 1 and len(webhook.requests) == 1

    slack_request = next(r for r in slack.accepted() if r.json().get("channel") == namespace)
    assert slack_request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert slack_request.path == "/chat.postMessage"
    text = message["text"]
    assert (
        "Secret `soon`" in text and "ExpiringSoon" in text and "Secret `gone`" in text and "Expired" in text
    )
    assert (
        "days left" in text and "CN=soon.test" in text and f"`{namespace}`" in text and "`fine`" not in text
    )

    body = request.json()
    assert (body["kind"], body["namespace"], body["certcheck"], body["target"]) == (
        "ExpiryNotification/v1",
        namespace,
        "c",
        "hook",
    )
    assert notified_certs([request]) == [("gone", "Expired"), ("soon", "ExpiringSoon")]
    assert request.headers["Authorization"] == "Bearer hook-auth"
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert abs(int(timestamp) - time.time()) < 60
    assert request.headers[SIGNATURE_HEADER] == signature(SIGNING_SECRET.encode(), timestamp, request.body)
    assert request.headers[DELIVERY_HEADER] == body["deliveryId"]


def test_a_failing_receiver_gets_the_message_exactly_once_in_the_end(
    cluster: Cluster, namespace: str, stack: Stack, webhook: Receiver
) -> None:
    create_credentials(cluster, namespace)
    webhook.script.extend([Reply(500), Reply(429, headers={"Retry-After": "1"}), Reply(200)])
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "r"})
    cluster.create_certcheck(
        namespace,
        "c",
        {"matchLabels": {"app": "r"}},
        notification={"targets": targets(namespace, webhook.url)["targets"][1:]},
    )
    wait_for(lambda: webhook.accepted(), timeout=30, what="delivery after the failures")
    wait_settled(stack, cluster, namespace)  # nothing more is sent
    assert [r.answered for r in webhook.requests] == [500, 429, 200]
    assert len({r.headers[DELIVERY_HEADER] for r in webhook.requests}) == 1  # the same delivery, retried
    assert webhook.requests[2].body == webhook.requests[0].body


def test_a_receiver_down_for_good_is_reported_and_does_not_block_other_targets(
    cluster: Cluster, namespace: str, slack: Receiver
) -> None:
    create_credentials(cluster, namespace)
    down = Receiver(Reply(503))
    try:
        cert, key = expiring_in(5)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "d"})
        cluster.create_certcheck(
            namespace, "c", {"matchLabels": {"app": "d"}}, notification=targets(namespace, down.url)
        )
        wait_for(lambda: slack_messages(slack, namespace), what="Slack still notified")
        condition = notification_failed(cluster, namespace, "c", timeout=40)
        assert condition["message"].startswith("hook: ") and "HTTP 503" in condition["message"]
        failures = cluster.status(namespace, "c")["notificationFailures"]
        assert [f["target"] for f in failures] == ["hook"]
        events = wait_for(
            lambda: [
                e for e in cluster.events(namespace, "CertCheck", "c") if e.reason == "NotificationFailed"
            ],
            what="the Event",
        )
        assert events[0].type == "Warning" and "hook" in events[0].message
        # Named after the service that wrote it, not the recorder.
        assert events[0].reporting_component == "certcheck.dev/notifier"
        assert events[0].source.component == "certcheck-notifier"
        assert len(down.requests) == 4  # CERTCHECK_NOTIFY_MAX_ATTEMPTS in the test stack
    finally:
        down.close()


def test_a_missing_credential_secret_is_a_condition_not_a_crash(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
    cluster.create_certcheck(
        namespace,
        "c",
        {"matchLabels": {"app": "m"}},
        notification={
            "targets": [
                {
                    "name": "slack",
                    "slack": {"channel": "x", "tokenSecretRef": {"name": "nope", "key": "token"}},
                }
            ]
        },
    )
    condition = notification_failed(cluster, namespace, "c", timeout=40)
    assert f"Secret {namespace}/nope not found" in condition["message"]
    assert stack.services["notifier"].running


def one_webhook(url: str) -> dict[str, Any]:
    return {"targets": [{"name": "hook", "webhook": {"url": url}}]}


@pytest.mark.parametrize("where", ["metadata", "loopback outside the allow-list"])
def test_a_webhook_to_an_internal_address_is_refused_with_a_reason_that_names_no_address(
    cluster: Cluster, namespace: str, stack: Stack, where: str
) -> None:
    """The suite's notifier allows 127.0.0.1 only: 127.0.0.2 is as refused as cloud metadata."""
    outside = Receiver(host="127.0.0.2")
    try:
        url = "http://169.254.169.254/latest/meta-data" if where == "metadata" else f"{outside.url}/hook"
        cert, key = expiring_in(5)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
        cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "m"}}, notification=one_webhook(url))
        condition = notification_failed(cluster, namespace, "c", timeout=40)
        assert "the destination is not allowed (egress policy)" in condition["message"]
        assert "after 1 attempts" in condition["message"]  # no retry can change the answer
        assert outside.requests == []
    finally:
        outside.close()


def test_a_webhook_on_an_allowed_address_is_delivered(
    cluster: Cluster, namespace: str, webhook: Receiver
) -> None:
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
    cluster.create_certcheck(
        namespace, "c", {"matchLabels": {"app": "m"}}, notification=one_webhook(f"{webhook.url}/hook")
    )
    wait_for(lambda: webhook.accepted(), timeout=30, what="the webhook delivery")


def test_a_redirect_to_an_internal_address_is_not_followed(
    cluster: Cluster, namespace: str, webhook: Receiver
) -> None:
    internal = Receiver()
    try:
        webhook.default = Reply(307, headers={"Location": f"{internal.url}/internal"})
        cert, key = expiring_in(5)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
        cluster.create_certcheck(
            namespace, "c", {"matchLabels": {"app": "m"}}, notification=one_webhook(f"{webhook.url}/hook")
        )
        condition = notification_failed(cluster, namespace, "c", timeout=40)
        assert "HTTP 307: redirects are not followed" in condition["message"]
        assert len(webhook.requests) == 1 and internal.requests == []
    finally:
        internal.close()


def test_a_secret_without_the_credential_label_is_refused_and_nothing_is_sent(
    cluster: Cluster, namespace: str, webhook: Receiver
) -> None:
    """A CertCheck author names a Secret they may not read: certcheck must not read it for them."""
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="db-password"), string_data={"password": "hunter2-db"}
        ),
    )
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "m"})
    hook = {"url": f"{webhook.url}/hook", "headersSecretRef": {"name": "db-password"}}
    notification = {"targets": [{"name": "h", "webhook": hook}]}
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "m"}}, notification=notification)
    condition = notification_failed(cluster, namespace, "c", timeout=40)
    refusal = f"Secret {namespace}/db-password is not labelled certcheck.dev/credential=true"
    assert refusal in condition["message"]
    assert webhook.requests == []

    # The Secret's owner opts in: the next notification sends, with the Secret's keys as headers.
    cluster.core.patch_namespaced_secret("db-password", namespace, {"metadata": {"labels": CREDENTIAL}})
    cert, key = expiring_in(4)
    cluster.create_tls_secret(namespace, "s2", cert, key, labels={"app": "m"})
    [sent] = wait_for(lambda: webhook.accepted(), timeout=30, what="the delivery once the Secret opted in")
    assert sent.headers["password"] == "hunter2-db"


def test_killing_the_notifier_mid_delivery_neither_loses_nor_doubles_the_notification(
    cluster: Cluster, namespace: str, stack: Stack, webhook: Receiver
) -> None:
    create_credentials(cluster, namespace)
    webhook.script.append(Reply(200, delay=4))  # the first delivery hangs: the notifier dies meanwhile
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "k"})
    cluster.create_certcheck(
        namespace,
        "c",
        {"matchLabels": {"app": "k"}},
        notification={"targets": targets(namespace, webhook.url)["targets"][1:]},
    )
    wait_for(lambda: webhook.requests, what="the delivery to start")
    stack.services["notifier"].kill()  # the receiver's answer, when it comes, goes to nobody
    stack.restart_service("notifier")
    # Sent again (once the result is redelivered): the first attempt was claimed, its outcome never recorded.
    wait_for(
        lambda: len(webhook.requests) >= 2 and webhook.requests[1].answered == 200,
        timeout=40,
        what="the delivery after the restart",
    )
    wait_settled(stack, cluster, namespace)  # nothing more is sent
    # The guarantee: one notification, identified by one delivery id. The receiver sees it twice, as the
    # notifier died before recording the first attempt; it drops the repeat by that id.
    assert len({r.headers[DELIVERY_HEADER] for r in webhook.requests}) == 1
    assert len(webhook.requests) == 2


def test_two_notifier_replicas_send_each_notification_once(
    cluster: Cluster, namespace: str, stack: Stack, slack: Receiver, webhook: Receiver
) -> None:
    from tests.conftest import NOTIFIER_TEST_ENV

    create_credentials(cluster, namespace)
    second = stack.start_service(
        "notifier", {"CERTCHECK_SLACK_API_URL": slack.url, **NOTIFIER_TEST_ENV}, instance="notifier-2"
    )
    try:
        for i in range(8):
            cert, key = expiring_in(3 + i)
            cluster.create_tls_secret(namespace, f"s{i}", cert, key, labels={"group": f"g{i}"})
            cluster.create_certcheck(
                namespace,
                f"c{i}",
                {"matchLabels": {"group": f"g{i}"}},
                notification=targets(namespace, webhook.url),
            )
        wait_for(
            lambda: len(webhook.accepted()) >= 8 and len(slack_messages(slack, namespace)) >= 8,
            timeout=30,
            what="eight notifications per target",
        )
        wait_settled(stack, cluster, namespace)  # nothing more from either replica
        assert len(webhook.requests) == 8
        assert sorted(r.json()["certcheck"] for r in webhook.requests) == [f"c{i}" for i in range(8)]
        assert len(slack_messages(slack, namespace)) == 8
    finally:
        second.stop()
        stack.services.pop("notifier-2")


def change_notifier_state(
    stack: Stack, namespace: str, certcheck: str, change: Callable[[core.NotifyState], None]
) -> int:
    """Change a CertCheck's durable notifier state (compare-and-set, as a replica would); returns the
    revision written."""

    async def write() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            kv = await nc.jetstream().key_value(NOTIFIER_STATE_BUCKET)
            while True:
                entry = await kv.get(f"{namespace}.{certcheck}")
                state = msgspec.json.decode(entry.value or b"", type=core.NotifyState)
                change(state)
                try:
                    return int(await kv.update(entry.key, encoder.encode(state), last=entry.revision))
                except KeyWrongLastSequenceError:
                    continue
        finally:
            await nc.close()

    return asyncio.run(write())


def notifier_state_revision(stack: Stack, namespace: str, certcheck: str) -> int:
    async def read() -> int:
        nc = await nats.connect(stack.nats.url)
        try:
            kv = await nc.jetstream().key_value(NOTIFIER_STATE_BUCKET)
            return int((await kv.get(f"{namespace}.{certcheck}")).revision or 0)
        finally:
            await nc.close()

    return asyncio.run(read())


def test_a_change_behind_another_replicas_delivery_is_sent_as_soon_as_that_delivery_settles(
    cluster: Cluster, namespace: str, stack: Stack, webhook: Receiver
) -> None:
    hook_only = {"targets": [{"name": "hook", "webhook": {"url": webhook.url}}]}
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "first", cert, key, labels={"app": "claims"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "claims"}}, notification=hook_only)
    wait_for(lambda: len(webhook.accepted()) == 1, timeout=30, what="the first notification")

    # Another replica is sending a delivery of this target, its claim good for another minute.
    other = core.Pending(
        "elsewhere-delivery",
        ExpiryNotification(
            delivery_id="elsewhere-delivery",
            namespace=namespace,
            certcheck="c",
            target="hook",
            threshold_days=None,
            certificates=[],
        ),
        claimed_by="notifier-elsewhere",
        claimed_until=rfc3339(datetime.now(UTC) + timedelta(seconds=60)),
    )
    claimed = change_notifier_state(
        stack, namespace, "c", lambda state: setattr(state.targets["hook"], "pending", other)
    )
    cluster.create_tls_secret(namespace, "second", cert, key, labels={"app": "claims"})
    # The notifier saw the new result, found the claim and left the target alone (it saved its look).
    wait_for(
        lambda: notifier_state_revision(stack, namespace, "c") > claimed, timeout=30, what="the claim found"
    )
    assert len(webhook.accepted()) == 1
    settled = time.monotonic()
    change_notifier_state(
        stack, namespace, "c", lambda state: setattr(state.targets["hook"], "pending", None)
    )

    # Well before the claim would have run out, the second certificate is told, and only it.
    wait_for(lambda: len(webhook.accepted()) == 2, timeout=20, what="the change behind the claim")
    assert time.monotonic() - settled < 20
    assert [c["secret"] for c in webhook.accepted()[1].json()["certificates"]] == ["second"]


def test_tokens_never_appear_in_logs_events_status_or_on_the_bus(
    cluster: Cluster, namespace: str, stack: Stack, slack: Receiver, bus_tap: Any
) -> None:
    create_credentials(cluster, namespace)
    failing = Receiver(Reply(401))
    try:
        cert, key = expiring_in(5)
        cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "t"})
        cluster.create_certcheck(
            namespace, "c", {"matchLabels": {"app": "t"}}, notification=targets(namespace, failing.url)
        )
        # Generous: a result handed to the replica stopped by the previous test returns after the ack wait.
        wait_for(lambda: slack_messages(slack, namespace), timeout=60, what="Slack notified")
        wait_for(
            lambda: cluster.status(namespace, "c").get("notificationFailures"), timeout=60, what="failure"
        )
    finally:
        failing.close()
    assert any(f".{namespace}." in subject for subject, _, _ in bus_tap.messages), "the tap saw none of it"
    for secret in (TOKEN, SIGNING_SECRET, "hook-auth"):
        for log in (stack.workdir / "logs").glob("*.log"):
            assert secret not in log.read_text(errors="replace"), f"{secret} in {log.name}"
        assert all(secret.encode() not in data for _, data, _ in bus_tap.messages)
        assert all(secret not in (e.message or "") for e in cluster.events(namespace))
        assert secret not in str(cluster.certcheck(namespace, "c"))


def test_slack_errors_retryable_or_not_are_told_apart(
    cluster: Cluster, namespace: str, stack: Stack, slack: Receiver
) -> None:
    create_credentials(cluster, namespace)
    slack_only = {"targets": targets(namespace, "http://127.0.0.1:9")["targets"][:1]}
    # Rate limited twice (HTTP 429 with Retry-After, then Slack's own "ratelimited"), then accepted.
    slack.script.extend(
        [Reply(429, headers={"Retry-After": "1"}), Reply(200, b'{"ok": false, "error": "ratelimited"}')]
    )
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "sl"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "sl"}}, notification=slack_only)

    def attempts() -> list[Any]:
        return [r for r in slack.requests if r.json().get("channel") == namespace]

    wait_for(lambda: len(attempts()) >= 3, timeout=30, what="the message after rate limiting")
    wait_settled(stack, cluster, namespace)  # no further attempt
    assert [r.answered for r in attempts()] == [429, 200, 200]  # the 2nd 200 said ok: false, ratelimited
    assert len({r.body for r in attempts()}) == 1  # the same message each time

    # A configuration error is not retried: it is reported at once.
    slack.script.append(Reply(200, b'{"ok": false, "error": "channel_not_found"}'))
    other, other_key = expiring_in(4)
    cluster.create_tls_secret(namespace, "t", other, other_key, labels={"app": "sl"})
    condition = notification_failed(cluster, namespace, "c", timeout=30)
    assert "channel_not_found" in condition["message"] and "after 1 attempts" in condition["message"]


def test_a_change_seen_while_a_delivery_is_retried_is_notified_after_it(
    cluster: Cluster, namespace: str, webhook: Receiver
) -> None:
    create_credentials(cluster, namespace)
    webhook.script.extend([Reply(503), Reply(503), Reply(503)])
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "first", cert, key, labels={"app": "later"})
    cluster.create_certcheck(
        namespace,
        "c",
        {"matchLabels": {"app": "later"}},
        notification={"targets": targets(namespace, webhook.url)["targets"][1:]},
    )
    wait_for(lambda: webhook.requests, what="the first delivery to be tried")
    second, second_key = expiring_in(6)
    cluster.create_tls_secret(namespace, "second", second, second_key, labels={"app": "later"})
    wait_for(
        lambda: notified_certs(webhook.accepted()) == [("first", "ExpiringSoon"), ("second", "ExpiringSoon")],
        timeout=40,
        what="both changes notified",
    )
    assert len({r.headers[DELIVERY_HEADER] for r in webhook.accepted()}) == len(webhook.accepted())


def test_a_token_with_a_trailing_newline_is_sent_without_it(
    cluster: Cluster, namespace: str, slack: Receiver
) -> None:
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="alerting", labels=CREDENTIAL),
            string_data={"token": TOKEN + "\n"},
        ),
    )
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "nl"})
    slack_only = {
        "targets": [
            {
                "name": "slack",
                "slack": {"channel": namespace, "tokenSecretRef": {"name": "alerting", "key": "token"}},
            }
        ]
    }
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "nl"}}, notification=slack_only)
    wait_for(lambda: slack_messages(slack, namespace), timeout=30, what="the Slack message")
    auth = {r.headers.get("Authorization") for r in slack.accepted() if r.json().get("channel") == namespace}
    assert auth == {f"Bearer {TOKEN}"}


def test_a_value_no_request_can_carry_is_a_reported_failure_that_never_quotes_it(
    cluster: Cluster, namespace: str, stack: Stack, webhook: Receiver
) -> None:
    credential = "hdr-secret-5c2e"
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hook-headers", labels=CREDENTIAL),
            string_data={"Authorization": f"Bearer {credential}\r\nX-Injected: 1"},
        ),
    )
    cert, key = expiring_in(5)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "bad"})
    hook = {
        "name": "hook",
        "webhook": {"url": f"{webhook.url}/x", "headersSecretRef": {"name": "hook-headers"}},
    }
    cluster.create_certcheck(
        namespace, "c", {"matchLabels": {"app": "bad"}}, notification={"targets": [hook]}
    )
    condition = notification_failed(cluster, namespace, "c", timeout=40)
    assert "while sending" in condition["message"]
    assert webhook.requests == []
    assert stack.services["notifier"].running
    for log in (stack.workdir / "logs").glob("*.log"):
        assert credential not in log.read_text(errors="replace"), log.name
    assert credential not in str(cluster.certcheck(namespace, "c"))
    assert all(credential not in (e.message or "") for e in cluster.events(namespace))
