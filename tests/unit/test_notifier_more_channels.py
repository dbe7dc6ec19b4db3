"""Alertmanager, PagerDuty and Microsoft Teams: what each posts for a notification (alerts with their
labels and endsAt, events with stable dedup keys, an Adaptive Card), how each sends it to a local
receiver, and the target defaults a channel needs (resolved notices, repeats)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from schemas.messages import (
    CertificateNotice,
    ExpiryNotification,
    NotificationTarget,
    SecretKeyRef,
    SecretRef,
)
from services.common.settings import Settings
from services.domain.times import parse_rfc3339
from services.notifier import channels
from services.notifier.channels import Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels._http import Poster
from services.notifier.channels.alertmanager import Alertmanager, AlertmanagerTarget, alerts
from services.notifier.channels.pagerduty import PagerDuty, PagerDutyTarget, dedup_key, events
from services.notifier.channels.teams import Teams, TeamsTarget, adaptive_card
from tests.receivers import Receiver, Reply

LOOPBACK = Poster(EgressPolicy(parse_networks("127.0.0.0/8")))
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def notice(
    state: str, change: str = "firing", previous: str | None = None, **more: object
) -> CertificateNotice:
    return CertificateNotice(
        secret="web",
        key="tls.crt",
        index=0,
        state=state,
        change=change,
        previous_state=previous,
        **more,  # type: ignore[arg-type]
    )


def notification(*notices: CertificateNotice) -> ExpiryNotification:
    return ExpiryNotification("d1", "shop", "web-check", "t", 30, list(notices))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


class TestAlertmanager:
    def test_a_firing_certificate_is_one_alert_with_its_labels_until_after_the_next_post(self) -> None:
        [alert] = alerts(
            notification(notice("ExpiringSoon", not_after="2026-12-11T00:00:00Z", days_remaining=4)),
            {"team": "shop"},
            NOW,
            timedelta(hours=21),
        )
        assert alert["labels"] == {
            "team": "shop",
            "alertname": "CertcheckCertificate",
            "namespace": "shop",
            "kind": "Secret",
            "secret": "web",
            "key": "tls.crt",
            "index": "0",
            "certcheck": "web-check",
            "state": "ExpiringSoon",
            "severity": "warning",
        }
        assert parse_rfc3339(str(alert["endsAt"])) == NOW + timedelta(hours=21)
        assert "4 days left" in alert["annotations"]["description"]  # type: ignore[index]

    def test_a_resolved_certificate_ends_the_alert_of_the_state_it_left_now(self) -> None:
        [alert] = alerts(notification(notice("Valid", "resolved", "Expired")), {}, NOW, timedelta(hours=21))
        assert alert["labels"]["state"] == "Expired"  # type: ignore[index]
        assert parse_rfc3339(str(alert["endsAt"])) == NOW

    def test_moving_to_another_state_fires_the_new_alert_and_ends_the_old(self) -> None:
        posted = alerts(notification(notice("Expired", previous="ExpiringSoon")), {}, NOW, timedelta(hours=1))
        ends = {a["labels"]["state"]: parse_rfc3339(str(a["endsAt"])) for a in posted}  # type: ignore[index]
        assert ends == {"Expired": NOW + timedelta(hours=1), "ExpiringSoon": NOW}
        assert (
            len(alerts(notification(notice("Expired", previous="Valid")), {}, NOW, timedelta(hours=1))) == 1
        )

    def test_it_posts_to_the_v2_api_with_the_headers_secret(self, receiver: Receiver) -> None:
        channel = Alertmanager(timedelta(hours=21), LOOPBACK)
        ref = SecretRef("am-auth")
        config = AlertmanagerTarget(receiver.url + "/", headers_secret_ref=ref)
        body = channel.render(config, notification(notice("Expired")))
        channel.send(config, body, "d1", Credentials(secrets={ref: {"Authorization": b"Bearer am\n"}}))
        [request] = receiver.requests
        assert request.path == "/api/v2/alerts"
        assert request.headers["Authorization"] == "Bearer am"
        assert request.json()[0]["labels"]["severity"] == "critical"

    def test_targets_get_resolved_notices_and_hourly_repeats_unless_they_say_otherwise(self) -> None:
        registry = channels.load(Settings())
        plain = channels.effective(
            registry, NotificationTarget("t", channels={"alertmanager": {"url": "http://a"}})
        )
        assert (plain.send_resolved, plain.repeat_interval) == (True, "1h")
        own = NotificationTarget("t", channels={"alertmanager": {"url": "http://a"}}, repeat_interval="15m")
        assert channels.effective(registry, own).repeat_interval == "15m"
        slack = NotificationTarget("t", channels={"slack": {}})
        assert channels.effective(registry, slack) is slack


ROUTING = SecretKeyRef("pd", "routing-key")


class TestPagerDuty:
    def test_a_trigger_per_certificate_with_a_dedup_key_stable_per_certificate_and_state(self) -> None:
        first = events(notification(notice("ExpiringSoon", not_after="2026-12-11T00:00:00Z")))
        again = events(notification(notice("ExpiringSoon", "repeat")))
        assert first[0]["event_action"] == "trigger" and first[0]["dedup_key"] == again[0]["dedup_key"]
        assert first[0]["payload"]["severity"] == "warning"  # type: ignore[index]
        assert first[0]["payload"]["custom_details"]["notAfter"] == "2026-12-11T00:00:00Z"  # type: ignore[index]
        moved = events(notification(notice("Expired", previous="ExpiringSoon")))
        assert [e["event_action"] for e in moved] == ["trigger", "resolve"]
        assert moved[1]["dedup_key"] == first[0]["dedup_key"] != moved[0]["dedup_key"]
        [resolved] = events(notification(notice("Valid", "resolved", "Expired")))
        assert resolved == {"event_action": "resolve", "dedup_key": moved[0]["dedup_key"]}

    def test_each_event_is_posted_with_the_routing_key_from_its_secret(self, receiver: Receiver) -> None:
        channel = PagerDuty(receiver.url, LOOPBACK)
        config = PagerDutyTarget(ROUTING)
        body = channel.render(config, notification(notice("Expired", previous="ExpiringSoon")))
        channel.send(config, body, "d1", Credentials(keys={ROUTING: b"R0UT1NG\n"}))
        assert [r.path for r in receiver.requests] == ["/v2/enqueue", "/v2/enqueue"]
        assert {r.json()["routing_key"] for r in receiver.requests} == {"R0UT1NG"}
        assert (
            dedup_key(notification(), notice("Expired"), "Expired")
            == receiver.requests[0].json()["dedup_key"]
        )

    def test_a_throttled_send_honours_retry_after(self, receiver: Receiver) -> None:
        receiver.script.append(Reply(429, headers={"Retry-After": "7"}))
        channel = PagerDuty(receiver.url, LOOPBACK)
        body = channel.render(PagerDutyTarget(ROUTING), notification(notice("Expired")))
        with pytest.raises(DeliveryError) as failed:
            channel.send(PagerDutyTarget(ROUTING), body, "d1", Credentials(keys={ROUTING: b"k"}))
        assert failed.value.retryable and failed.value.retry_after == 7


URL_REF = SecretKeyRef("teams", "url")


class TestTeams:
    def test_an_adaptive_card_lists_the_certificates(self) -> None:
        card = adaptive_card(
            notification(
                notice("Expired", not_after="2026-12-01T00:00:00Z"), notice("Valid", "resolved", "Expired")
            )
        )
        content = card["attachments"][0]["content"]  # type: ignore[index]
        assert content["type"] == "AdaptiveCard"
        header, _, facts = content["body"]
        assert header["color"] == "Attention"
        assert [f["title"] for f in facts["facts"]] == ["Expired", "recovered"]

    def test_the_card_goes_to_the_url_held_in_the_secret_under_the_egress_policy(
        self, receiver: Receiver
    ) -> None:
        channel = Teams(LOOPBACK)
        config = TeamsTarget(URL_REF)
        body = channel.render(config, notification(notice("Expired")))
        channel.send(
            config, body, "d1", Credentials(keys={URL_REF: f"{receiver.url}/workflows/x?sig=1\n".encode()})
        )
        assert receiver.requests[0].path == "/workflows/x?sig=1"
        internal = Teams(Poster(EgressPolicy()))  # the default policy: no loopback
        with pytest.raises(DeliveryError) as refused:
            internal.send(config, body, "d1", Credentials(keys={URL_REF: receiver.url.encode()}))
        assert not refused.value.retryable and "sig" not in str(refused.value)
