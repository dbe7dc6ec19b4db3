"""Microsoft Teams: an Adaptive Card posted to a Workflows webhook ("Post to a channel when a webhook
request is received"), whose URL, a credential, is held in a Secret."""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import msgspec

from schemas.messages import ExpiryNotification, SecretKeyRef
from services.common.settings import Settings
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels._http import Poster

SHOWN = 20
_COLOURS = {
    "Expired": "Attention",
    "Invalid": "Attention",
    "ExpiringSoon": "Warning",
    "RenewalOverdue": "Warning",
}


class TeamsTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``teams`` settings: the Secret key holding the Workflows webhook URL."""

    url_secret_ref: SecretKeyRef


def adaptive_card(notification: ExpiryNotification) -> dict[str, object]:
    count = len(notification.certificates)
    facts = []
    for notice in notification.certificates[:SHOWN]:
        state = "recovered" if notice.change == "resolved" else notice.state
        when = f", notAfter {notice.not_after}" if notice.not_after else ""
        left = (
            f" ({notice.days_remaining} days left)"
            if notice.days_remaining is not None and notice.days_remaining >= 0
            else ""
        )
        reason = f": {notice.reason}" if notice.reason else ""
        where = f"{notice.kind} {notice.secret} key {notice.key}[{notice.index}]"
        facts.append({"title": state, "value": f"{where}{when}{left}{reason}"})
    worst = next(
        (n.state for n in notification.certificates if n.change != "resolved" and n.state in _COLOURS), None
    )
    body: list[dict[str, object]] = [
        {
            "type": "TextBlock",
            "size": "Medium",
            "weight": "Bolder",
            "wrap": True,
            "color": _COLOURS.get(worst or "", "Good"),
            "text": f"certcheck: {count} certificate{'s' if count != 1 else ''} in namespace "
            f"{notification.namespace}",
        },
        {"type": "TextBlock", "isSubtle": True, "wrap": True, "text": f"CertCheck {notification.certcheck}"},
        {"type": "FactSet", "facts": facts},
    ]
    if count > SHOWN:
        body.append({"type": "TextBlock", "wrap": True, "text": f"… and {count - SHOWN} more"})
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                },
            }
        ],
    }


@dataclass(frozen=True)
class Teams:
    poster: Poster = dataclass_field(default_factory=Poster)
    name: str = "teams"
    field: str = "teams"
    settings_type: type[TeamsTarget] = TeamsTarget
    defaults: tuple[tuple[str, object], ...] = ()

    def credentials(self, config: TeamsTarget) -> list[CredentialRef]:
        return [config.url_secret_ref]

    def render(self, config: TeamsTarget, notification: ExpiryNotification) -> bytes:
        return json.dumps(adaptive_card(notification)).encode()

    def send(self, config: TeamsTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        url = credentials.value(config.url_secret_ref).decode().strip()
        if not url:
            raise DeliveryError("the webhook URL Secret key is empty", False)
        self.poster.post(url, body, {"Content-Type": "application/json", "User-Agent": "certcheck-notifier"})


def channel(settings: Settings) -> Teams:
    """The URL is a CertCheck author's: public addresses only, and the allowed networks."""
    return Teams(Poster(EgressPolicy(parse_networks(settings.webhook_allowed_cidrs))))
