"""PagerDuty Events API v2: a ``trigger`` per certificate entering a notifying state, with a dedup key
stable per certificate and state (a repeat updates the same incident), and a ``resolve`` of that key when
it leaves the state (the target always sends resolved notices). The routing key comes from a Secret."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import msgspec

from schemas.messages import CertificateNotice, ExpiryNotification, SecretKeyRef
from services.common.settings import Settings
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy
from services.notifier.channels._http import Poster

SEVERITY = {"Expired": "critical", "Invalid": "error", "ExpiringSoon": "warning", "RenewalOverdue": "warning"}


class PagerDutyTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``pagerduty`` settings: the Secret key holding the integration's routing key."""

    routing_key_secret_ref: SecretKeyRef


def dedup_key(notification: ExpiryNotification, notice: CertificateNotice, state: str) -> str:
    """Stable per certificate and state: the same incident for every repeat, another for another state."""
    where = [
        notification.namespace,
        notification.certcheck,
        notice.kind,
        notice.secret,
        notice.key,
        str(notice.index),
        state,
    ]
    return "certcheck-" + hashlib.sha256("|".join(where).encode()).hexdigest()[:32]


def _trigger(notification: ExpiryNotification, notice: CertificateNotice) -> dict[str, object]:
    where = f"{notice.kind} {notification.namespace}/{notice.secret} key {notice.key}[{notice.index}]"
    details = {
        name: value
        for name, value in (
            ("namespace", notification.namespace),
            ("certcheck", notification.certcheck),
            ("state", notice.state),
            ("notAfter", notice.not_after),
            ("daysRemaining", notice.days_remaining),
            ("subject", notice.subject),
            ("issuer", notice.issuer),
            ("serialNumber", notice.serial_number),
            ("reason", notice.reason),
        )
        if value is not None
    }
    return {
        "event_action": "trigger",
        "dedup_key": dedup_key(notification, notice, notice.state),
        "payload": {
            "summary": f"Certificate {notice.state}: {where}"[:1024],
            "source": f"certcheck/{notification.namespace}/{notification.certcheck}",
            "severity": SEVERITY.get(notice.state, "info"),
            "component": f"{notice.kind}/{notice.secret}",
            "group": notification.namespace,
            "class": "certificate-expiry",
            "custom_details": details,
        },
    }


def events(notification: ExpiryNotification) -> list[dict[str, object]]:
    """The events of a notification, without the routing key (added when sending)."""
    sent: list[dict[str, object]] = []
    for notice in notification.certificates:
        if notice.change == "reminder" and notice.state not in SEVERITY:
            continue  # a reminder of a certificate still Valid: for people's channels, not an alert
        left = notice.previous_state
        if notice.change == "resolved":
            sent.append(
                {
                    "event_action": "resolve",
                    "dedup_key": dedup_key(notification, notice, left or notice.state),
                }
            )
            continue
        sent.append(_trigger(notification, notice))
        if left in SEVERITY and left != notice.state:  # the incident of the state it left is over
            sent.append({"event_action": "resolve", "dedup_key": dedup_key(notification, notice, left)})
    return sent


@dataclass(frozen=True)
class PagerDuty:
    api_url: str  # CERTCHECK_PAGERDUTY_API_URL, https://events.pagerduty.com by default
    poster: Poster = dataclass_field(default_factory=lambda: Poster(EgressPolicy(allow_all=True)))
    name: str = "pagerduty"
    field: str = "pagerduty"
    settings_type: type[PagerDutyTarget] = PagerDutyTarget
    defaults: tuple[tuple[str, object], ...] = (("send_resolved", True),)

    def credentials(self, config: PagerDutyTarget) -> list[CredentialRef]:
        return [config.routing_key_secret_ref]

    def render(self, config: PagerDutyTarget, notification: ExpiryNotification) -> bytes:
        return json.dumps(events(notification)).encode()

    def send(self, config: PagerDutyTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        """One request per event (the API takes one at a time); each is idempotent by its dedup key, so a
        retry of the whole delivery repeats nothing PagerDuty would count twice."""
        routing_key = credentials.value(config.routing_key_secret_ref).decode().strip()
        if not routing_key:
            raise DeliveryError("the routing key Secret key is empty", False)
        url = self.api_url.rstrip("/") + "/v2/enqueue"
        for event in json.loads(body):
            payload = json.dumps({**event, "routing_key": routing_key}).encode()
            self.poster.post(
                url, payload, {"Content-Type": "application/json", "User-Agent": "certcheck-notifier"}
            )


def channel(settings: Settings) -> PagerDuty:
    return PagerDuty(settings.pagerduty_api_url)
