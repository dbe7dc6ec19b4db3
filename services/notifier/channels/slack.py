"""Slack: chat.postMessage with a bot token (chat:write), a message readable at a glance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import msgspec

from schemas.messages import ExpiryNotification, SecretKeyRef
from services.common.settings import Settings
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy
from services.notifier.channels._http import Poster

# Slack errors worth retrying; every other `ok: false` is a configuration problem.
SLACK_RETRYABLE = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}

_ICONS = {
    "Expired": ":red_circle:",
    "ExpiringSoon": ":warning:",
    "Invalid": ":x:",
    "RenewalOverdue": ":hourglass:",
    "resolved": ":white_check_mark:",
}


def slack_text(notification: ExpiryNotification) -> str:
    """A message readable at a glance: what, where, how long is left."""
    count = len(notification.certificates)
    lines = [
        f"*certcheck*: {count} certificate{'s' if count != 1 else ''} in namespace "
        f"`{notification.namespace}` (CertCheck `{notification.certcheck}`)"
    ]
    for notice in notification.certificates[:20]:
        icon = _ICONS.get("resolved" if notice.change == "resolved" else notice.state, ":information_source:")
        what = "recovered" if notice.change == "resolved" else notice.state
        when = ""
        if notice.not_after:
            left = notice.days_remaining
            when = f", notAfter {notice.not_after}" + (
                f" ({left} days left)" if left is not None and left >= 0 else ""
            )
        who = f" CN={notice.subject}" if notice.subject else ""
        issuer = f" issued by {notice.issuer}" if notice.issuer else ""
        reason = f": {notice.reason}" if notice.reason else ""
        where = f"{notice.kind} `{notice.secret}` key `{notice.key}`[{notice.index}]"
        lines.append(f"{icon} *{what}* {where}{who}{issuer}{when}{reason}")
    if count > 20:
        lines.append(f"… and {count - 20} more")
    return "\n".join(lines)


class SlackTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``slack`` settings: the channel to post in, and the bot token's Secret key."""

    channel: str
    token_secret_ref: SecretKeyRef


@dataclass(frozen=True)
class Slack:
    api_url: str  # CERTCHECK_SLACK_API_URL, e.g. https://slack.com/api
    # The operator chose the API URL, so any address; redirects are still not followed.
    poster: Poster = dataclass_field(default_factory=lambda: Poster(EgressPolicy(allow_all=True)))
    name: str = "slack"
    field: str = "slack"
    settings_type: type[SlackTarget] = SlackTarget
    defaults: tuple[tuple[str, object], ...] = ()

    def credentials(self, config: SlackTarget) -> list[CredentialRef]:
        return [config.token_secret_ref]

    def render(self, config: SlackTarget, notification: ExpiryNotification) -> bytes:
        message = {"channel": config.channel, "text": slack_text(notification), "unfurl_links": False}
        return json.dumps(message).encode()

    def send(self, config: SlackTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        # A trailing newline (echo > file) is no part of a token.
        token = credentials.value(config.token_secret_ref).decode().strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
        answer = self.poster.post(self.api_url.rstrip("/") + "/chat.postMessage", body, headers)
        try:
            reply = json.loads(answer)
        except ValueError:
            raise DeliveryError("Slack answered something that is not JSON", True) from None
        if not reply.get("ok"):
            error = str(reply.get("error", "unknown_error"))
            raise DeliveryError(f"Slack refused the message: {error}", error in SLACK_RETRYABLE)


def channel(settings: Settings) -> Slack:
    return Slack(settings.slack_api_url)
