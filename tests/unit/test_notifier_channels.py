"""Notification channels are plug-ins found by the target field they read; Slack and webhooks send what
they sent before the move (bodies, headers, signature, delivery id) and say what a failure means."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator

import msgspec
import pytest

from schemas.messages import (
    CertificateNotice,
    ExpiryNotification,
    NotificationTarget,
    SecretKeyRef,
    SecretRef,
    encoder,
)
from services.common.settings import Settings
from services.notifier import channels
from services.notifier.channels import Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels._http import Poster
from services.notifier.channels.slack import Slack, SlackTarget, slack_text
from services.notifier.channels.webhook import Webhook, WebhookTarget
from services.notifier.core import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from tests.receivers import Receiver, Reply, slack_ok

TOKEN_REF = SecretKeyRef("alerting", "slack-token")
SIGNING_REF = SecretKeyRef("alerting", "signing")
HEADERS_REF = SecretRef("hook-headers")
NOTICE = CertificateNotice(
    secret="web",
    key="tls.crt",
    index=0,
    state="ExpiringSoon",
    change="firing",
    not_after="2026-06-10T00:00:00Z",
    days_remaining=9,
    subject="web.test",
)
NOTIFICATION = ExpiryNotification("d1", "shop", "web", "t", 30, [NOTICE])
LOOPBACK = Poster(EgressPolicy(parse_networks("127.0.0.0/8")))  # the receivers listen on loopback


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_the_registry_finds_every_channel_module_by_its_target_field() -> None:
    registry = channels.load(Settings(slack_api_url="http://slack.invalid/api"))
    assert list(registry.by_field) == ["alertmanager", "email", "pagerduty", "slack", "teams", "webhook"]
    slack_settings = {"channel": "#c", "tokenSecretRef": {"name": "alerting", "key": "slack-token"}}
    slack = registry.find(NotificationTarget("t", channels={"slack": slack_settings}))
    hook = registry.find(NotificationTarget("t", channels={"webhook": {"url": "http://hook.invalid"}}))
    assert isinstance(slack, channels.Selected) and isinstance(slack.channel, Slack)
    assert slack.config == SlackTarget("#c", TOKEN_REF)
    assert isinstance(hook, channels.Selected) and isinstance(hook.channel, Webhook)
    assert slack.channel.api_url == "http://slack.invalid/api"


def test_a_target_without_a_channel_fails_for_good() -> None:
    missing = channels.load(Settings()).find(NotificationTarget("t"))
    assert isinstance(missing, DeliveryError)
    assert (str(missing), missing.retryable) == (
        "target names no channel (one of alertmanager, email, pagerduty, slack, teams, webhook)",
        False,
    )


def test_a_target_whose_channel_settings_are_not_valid_fails_for_good_saying_why() -> None:
    target = NotificationTarget("t", channels={"webhook": {"url": 42}})
    refused = channels.load(Settings()).find(target)
    assert isinstance(refused, DeliveryError) and not refused.retryable
    assert str(refused).startswith("the webhook settings of target t are not valid: Expected `str`")


def test_a_new_channel_needs_no_change_to_the_wire_contract() -> None:
    """A target field the contract does not know is carried to the notifier as that channel's settings."""
    from services.watcher.extract import _notification

    spec = _notification(
        msgspec.Raw(b'{"targets": [{"name": "t", "pagerduty": {"routingKey": "x"}, "states": ["Expired"]}]}')
    )
    assert spec is not None
    [target] = spec.targets
    assert target.channels == {"pagerduty": {"routingKey": "x"}} and target.states == ["Expired"]
    assert msgspec.json.decode(encoder.encode(target), type=NotificationTarget) == target


def test_a_target_written_by_an_earlier_release_is_read_into_channels() -> None:
    legacy = b'{"name": "t", "webhook": {"url": "http://hook.invalid"}, "slack": null}'
    target = msgspec.json.decode(legacy, type=NotificationTarget)
    assert target.channels == {"webhook": {"url": "http://hook.invalid"}}
    assert b"slack" not in encoder.encode(target) and b'"webhook"' not in encoder.encode(target).replace(
        b'"channels":{"webhook"', b""
    )


def test_slack_text_is_readable() -> None:
    text = slack_text(NOTIFICATION)
    assert "1 certificate in namespace `shop` (CertCheck `web`)" in text
    assert "*ExpiringSoon* Secret `web` key `tls.crt`[0] CN=web.test" in text and "9 days left" in text


def test_slack_posts_the_text_to_the_channel_with_the_stripped_token(receiver: Receiver) -> None:
    receiver.default = slack_ok()
    slack, target = Slack(receiver.url + "/api/"), SlackTarget("#certs", TOKEN_REF)
    assert slack.credentials(target) == [TOKEN_REF]
    body = slack.render(target, NOTIFICATION)
    slack.send(target, body, "d1", Credentials(keys={TOKEN_REF: b"xoxb-1\n"}))
    [request] = receiver.requests
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == "Bearer xoxb-1"
    assert request.json() == {"channel": "#certs", "text": slack_text(NOTIFICATION), "unfurl_links": False}


@pytest.mark.parametrize(
    "answer,reason,retryable",
    [
        (b'{"ok": false, "error": "invalid_auth"}', "Slack refused the message: invalid_auth", False),
        (b'{"ok": false, "error": "ratelimited"}', "Slack refused the message: ratelimited", True),
        (b"<html>", "Slack answered something that is not JSON", True),
    ],
)
def test_slack_says_whether_a_refusal_is_worth_retrying(
    receiver: Receiver, answer: bytes, reason: str, retryable: bool
) -> None:
    receiver.default = Reply(200, answer)
    slack, target = Slack(receiver.url), SlackTarget("#certs", TOKEN_REF)
    with pytest.raises(DeliveryError) as failed:
        slack.send(target, slack.render(target, NOTIFICATION), "d1", Credentials(keys={TOKEN_REF: b"t"}))
    assert (failed.value.reason, failed.value.retryable) == (reason, retryable)


def test_a_webhook_gets_the_notification_signed_with_its_delivery_id_and_extra_headers(
    receiver: Receiver,
) -> None:
    hook = Webhook(LOOPBACK)
    target = WebhookTarget(receiver.url + "/hook", SIGNING_REF, HEADERS_REF)
    assert hook.credentials(target) == [SIGNING_REF, HEADERS_REF]
    body = hook.render(target, NOTIFICATION)
    assert body == encoder.encode(NOTIFICATION)
    credentials = Credentials({SIGNING_REF: b"whsec"}, {HEADERS_REF: {"Authorization": b"Bearer x\n"}})
    hook.send(target, body, "d1", credentials)
    [request] = receiver.requests
    timestamp = request.headers[TIMESTAMP_HEADER]
    expected = hmac.new(b"whsec", timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert request.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert request.headers[DELIVERY_HEADER] == "d1" == json.loads(request.body)["deliveryId"]
    assert request.headers["Authorization"] == "Bearer x"
    assert request.headers["User-Agent"] == "certcheck-notifier"


def test_an_unsigned_webhook_reads_no_secret_and_sends_no_signature(receiver: Receiver) -> None:
    hook, target = Webhook(LOOPBACK), WebhookTarget(receiver.url)
    assert hook.credentials(target) == []
    hook.send(target, hook.render(target, NOTIFICATION), "d1", Credentials())
    assert SIGNATURE_HEADER not in receiver.requests[0].headers


@pytest.mark.parametrize(
    "reply,reason,retryable,retry_after",
    [
        (Reply(429, headers={"Retry-After": "7"}), "answered 429 Too Many Requests", True, 7.0),
        (Reply(503, headers={"Retry-After": "soon"}), "answered HTTP 503", True, None),
        (Reply(404), "answered HTTP 404", False, None),
    ],
)
def test_a_webhook_failure_says_whether_and_when_to_retry_without_the_query(
    receiver: Receiver, reply: Reply, reason: str, retryable: bool, retry_after: float | None
) -> None:
    receiver.default = reply
    hook, target = Webhook(LOOPBACK), WebhookTarget(receiver.url + "/hook?token=secret")
    with pytest.raises(DeliveryError) as failed:
        hook.send(target, b"{}", "d1", Credentials())
    error = failed.value
    assert str(error) == f"{receiver.url}/hook {reason}"
    assert (error.retryable, error.retry_after) == (retryable, retry_after)


def test_an_unreachable_webhook_is_worth_retrying_and_its_reason_names_no_socket_error() -> None:
    hook, target = Webhook(LOOPBACK), WebhookTarget("http://127.0.0.1:9/hook")
    with pytest.raises(DeliveryError) as failed:
        hook.send(target, b"{}", "d1", Credentials())
    assert failed.value.retryable and str(failed.value) == "http://127.0.0.1:9/hook: could not connect"
