"""Webhooks: the ExpiryNotification as JSON, with a delivery id stable across retries, optionally signed
(HMAC-SHA256 over "<timestamp>.<body>") and with extra headers from a Secret."""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import msgspec

from schemas.messages import ExpiryNotification, SecretKeyRef, SecretRef, encoder
from services.common.settings import Settings
from services.notifier.channels import CredentialRef, Credentials
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels._http import Poster
from services.notifier.core import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature


class WebhookTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``webhook`` settings: where to POST, how to sign, which headers to add."""

    url: str
    signing_secret_ref: SecretKeyRef | None = None
    headers_secret_ref: SecretRef | None = None  # every key of that Secret becomes a header


@dataclass(frozen=True)
class Webhook:
    poster: Poster = dataclass_field(default_factory=Poster)
    name: str = "webhook"
    field: str = "webhook"
    settings_type: type[WebhookTarget] = WebhookTarget
    defaults: tuple[tuple[str, object], ...] = ()

    def credentials(self, config: WebhookTarget) -> list[CredentialRef]:
        refs: list[CredentialRef] = []
        if config.signing_secret_ref:
            refs.append(config.signing_secret_ref)
        if config.headers_secret_ref:
            refs.append(config.headers_secret_ref)
        return refs

    def render(self, config: WebhookTarget, notification: ExpiryNotification) -> bytes:
        return encoder.encode(notification)

    def send(self, config: WebhookTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        extra: dict[str, str] = {}
        if config.headers_secret_ref:
            values = credentials.values(config.headers_secret_ref)
            extra = {k: v.decode().strip() for k, v in values.items()}
        timestamp = str(int(time.time()))
        headers = {
            **extra,
            "Content-Type": "application/json",
            DELIVERY_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp,
            "User-Agent": "certcheck-notifier",
        }
        if config.signing_secret_ref:
            secret = credentials.value(config.signing_secret_ref)
            headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
        self.poster.post(config.url, body, headers)


def channel(settings: Settings) -> Webhook:
    """Webhook URLs are written by CertCheck authors: public addresses only, and the allowed networks."""
    return Webhook(Poster(EgressPolicy(parse_networks(settings.webhook_allowed_cidrs))))
