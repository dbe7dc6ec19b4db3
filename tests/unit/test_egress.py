"""The notifier connects only where the egress policy permits: public addresses by default, chosen
networks by setting, each checked after resolution and connected to as checked; no redirect is followed,
and no reason names an address or carries a URL's credentials."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from schemas.messages import SecretKeyRef
from services.common.settings import Settings
from services.notifier.channels import Credentials, DeliveryError
from services.notifier.channels._egress import (
    DestinationRefused,
    EgressPolicy,
    checked_addresses,
    parse_networks,
)
from services.notifier.channels._http import Poster
from services.notifier.channels.slack import Slack, SlackTarget
from services.notifier.channels.webhook import WebhookTarget, channel
from tests.receivers import Receiver, Reply, slack_ok

DEFAULT = EgressPolicy()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "::1",
        "169.254.169.254",  # cloud metadata (link-local)
        "fe80::1",
        "10.0.0.1",  # private
        "172.16.5.4",
        "192.168.1.1",
        "fd00::1",
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
    ],
)
def test_the_default_policy_refuses_internal_addresses(address: str) -> None:
    assert not DEFAULT.permits(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:8.8.8.8"])
def test_the_default_policy_permits_public_addresses(address: str) -> None:
    assert DEFAULT.permits(ipaddress.ip_address(address))


def test_an_allowed_network_is_permitted_and_nothing_beside_it() -> None:
    policy = EgressPolicy(parse_networks("10.1.0.0/16, 127.0.0.1"))
    assert policy.permits(ipaddress.ip_address("10.1.2.3"))
    assert policy.permits(ipaddress.ip_address("127.0.0.1"))
    assert not policy.permits(ipaddress.ip_address("10.2.0.1"))
    assert not policy.permits(ipaddress.ip_address("127.0.0.2"))


def test_a_setting_that_is_not_a_cidr_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33'"):
        parse_networks("10.0.0.0/8,10.0.0.0/33")


def test_a_host_that_resolves_to_one_internal_address_among_public_ones_is_refused() -> None:
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "169.254.169.254"]

    with pytest.raises(DestinationRefused):
        checked_addresses("hooks.example.com", 443, DEFAULT, rebinding)


def test_the_connection_goes_to_the_address_that_was_checked_not_to_a_second_resolution(
    receiver: Receiver,
) -> None:
    """A rebinding name answers a permitted address first and an internal one after: only one
    resolution happens, and the request reaches the permitted (checked) address."""
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    resolved: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        resolved.append(host)
        return answers[len(resolved) - 1]

    poster = Poster(EgressPolicy(parse_networks("127.0.0.0/8")), resolve=rebinding)
    poster.post(f"http://hooks.example.test:{receiver.port}/hook", b"{}", {})
    assert resolved == ["hooks.example.test"]
    [request] = receiver.requests
    assert request.headers["Host"] == f"hooks.example.test:{receiver.port}"


def test_a_webhook_on_loopback_is_refused_by_default_without_a_request_or_an_address(
    receiver: Receiver,
) -> None:
    hook = channel(Settings(webhook_allowed_cidrs=""))
    with pytest.raises(DeliveryError) as failed:
        hook.send(WebhookTarget(f"http://localhost:{receiver.port}/hook"), b"{}", "d1", Credentials())
    assert not failed.value.retryable
    assert "egress policy" in failed.value.reason and "127.0.0.1" not in failed.value.reason
    assert receiver.requests == []


def test_the_allow_list_setting_lets_a_webhook_reach_loopback(receiver: Receiver) -> None:
    hook = channel(Settings(webhook_allowed_cidrs="127.0.0.0/8"))
    hook.send(WebhookTarget(f"{receiver.url}/hook"), b"{}", "d1", Credentials())
    assert len(receiver.requests) == 1


def test_a_redirect_is_not_followed_and_fails_for_good(receiver: Receiver) -> None:
    second = Receiver()
    try:
        receiver.default = Reply(302, headers={"Location": f"{second.url}/internal"})
        hook = channel(Settings(webhook_allowed_cidrs="127.0.0.0/8"))
        with pytest.raises(DeliveryError) as failed:
            hook.send(WebhookTarget(f"{receiver.url}/hook"), b"{}", "d1", Credentials())
        assert not failed.value.retryable and "redirects are not followed" in failed.value.reason
        assert len(receiver.requests) == 1 and second.requests == []
    finally:
        second.close()


def test_slack_does_not_follow_a_redirect_either(receiver: Receiver) -> None:
    receiver.default = Reply(301, headers={"Location": "http://169.254.169.254/"})
    slack, target = Slack(receiver.url), SlackTarget("#certs", SecretKeyRef("s", "k"))
    with pytest.raises(DeliveryError, match="redirects are not followed"):
        slack.send(target, b"{}", "d1", Credentials(keys={SecretKeyRef("s", "k"): b"t"}))


def test_slack_reaches_the_api_url_the_operator_set_even_on_loopback(receiver: Receiver) -> None:
    receiver.default = slack_ok()
    slack, target = Slack(receiver.url), SlackTarget("#certs", SecretKeyRef("s", "k"))
    slack.send(target, b"{}", "d1", Credentials(keys={SecretKeyRef("s", "k"): b"t"}))
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url,reason",
    [
        ("ftp://hooks.example.com/x", "must be http:// or https://"),
        ("file:///etc/passwd", "must be http:// or https://"),
        ("http://admin:hunter2@hooks.example.com/x", "carries user:password"),
        ("http://hooks.example.com:99999/x", "not valid"),
    ],
)
def test_a_url_that_cannot_be_sent_to_fails_for_good_without_quoting_credentials(
    url: str, reason: str
) -> None:
    with pytest.raises(DeliveryError) as failed:
        Poster().post(url, b"{}", {})
    assert reason in failed.value.reason and not failed.value.retryable
    assert "hunter2" not in failed.value.reason and "admin" not in failed.value.reason
