"""Alertmanager: POST /api/v2/alerts, one alert per certificate and state, so that Alertmanager's own
routing, grouping, inhibition and silences apply.

An alert fires with ``endsAt`` ahead of the next time certcheck will post it again (every result after
``repeatInterval``, one hour unless the target says otherwise; results come at least every resync), so it
never times out while the state lasts, and is resolved (``endsAt`` now) when the certificate leaves the
state: the target always sends resolved notices. A certificate moving from one state to another resolves
the alert of the state it left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta

import msgspec

from schemas.messages import CertificateNotice, ExpiryNotification, SecretRef
from services.common.settings import Settings
from services.domain.times import rfc3339
from services.notifier.channels import CredentialRef, Credentials
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels._http import Poster

ALERT_NAME = "CertcheckCertificate"
SEVERITY = {
    "Expired": "critical",
    "Invalid": "critical",
    "ExpiringSoon": "warning",
    "RenewalOverdue": "warning",
}


class AlertmanagerTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``alertmanager`` settings: Alertmanager's URL (its API is under /api/v2), labels to add
    to every alert, and optionally a Secret whose keys become headers (an Authorization header)."""

    url: str
    labels: dict[str, str] = {}
    headers_secret_ref: SecretRef | None = None


def _alert(
    notification: ExpiryNotification,
    notice: CertificateNotice,
    state: str,
    ends_at: datetime,
    extra: dict[str, str],
    now: datetime,
) -> dict[str, object]:
    labels = {
        **extra,
        "alertname": ALERT_NAME,
        "namespace": notification.namespace,
        "kind": notice.kind,
        "secret": notice.secret,
        "key": notice.key,
        "index": str(notice.index),
        "certcheck": notification.certcheck,
        "state": state,
        "severity": SEVERITY.get(state, "info"),
    }
    left = f", {notice.days_remaining} days left" if notice.days_remaining is not None else ""
    where = f"{notice.kind} {notification.namespace}/{notice.secret} key {notice.key}[{notice.index}]"
    annotations = {
        "summary": f"Certificate {state}: {where}",
        "description": f"{where} is {state}"
        + (f" (notAfter {notice.not_after}{left})" if notice.not_after else "")
        + (f": {notice.reason}" if notice.reason else ""),
    }
    annotations |= {
        name: value
        for name, value in (
            ("notAfter", notice.not_after),
            ("subject", notice.subject),
            ("issuer", notice.issuer),
        )
        if value
    }
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(now),
        "endsAt": rfc3339(ends_at),
    }


def alerts(
    notification: ExpiryNotification, extra: dict[str, str], now: datetime, firing_for: timedelta
) -> list[dict[str, object]]:
    """The alerts a notification posts: each firing (or still firing) state until ``now + firing_for``,
    each state left (resolved, or moved to another) ended now."""
    posted = []
    for notice in notification.certificates:
        if notice.change == "reminder" and notice.state not in SEVERITY:
            continue  # a reminder of a certificate still Valid: for people's channels, not an alert
        left = notice.previous_state
        if notice.change == "resolved":
            posted.append(_alert(notification, notice, left or notice.state, now, extra, now))
            continue
        posted.append(_alert(notification, notice, notice.state, now + firing_for, extra, now))
        if left in SEVERITY and left != notice.state:  # moved on from another alerting state
            posted.append(_alert(notification, notice, left, now, extra, now))
    return posted


@dataclass(frozen=True)
class Alertmanager:
    firing_for: timedelta  # how long a posted alert fires unless posted again: beyond the next post
    poster: Poster = dataclass_field(default_factory=Poster)
    name: str = "alertmanager"
    field: str = "alertmanager"
    settings_type: type[AlertmanagerTarget] = AlertmanagerTarget
    defaults: tuple[tuple[str, object], ...] = (("repeat_interval", "1h"), ("send_resolved", True))

    def credentials(self, config: AlertmanagerTarget) -> list[CredentialRef]:
        return [config.headers_secret_ref] if config.headers_secret_ref else []

    def render(self, config: AlertmanagerTarget, notification: ExpiryNotification) -> bytes:
        return json.dumps(alerts(notification, config.labels, datetime.now(UTC), self.firing_for)).encode()

    def send(
        self, config: AlertmanagerTarget, body: bytes, delivery_id: str, credentials: Credentials
    ) -> None:
        extra: dict[str, str] = {}
        if config.headers_secret_ref:
            extra = {k: v.decode().strip() for k, v in credentials.values(config.headers_secret_ref).items()}
        headers = {**extra, "Content-Type": "application/json", "User-Agent": "certcheck-notifier"}
        self.poster.post(config.url.rstrip("/") + "/api/v2/alerts", body, headers)


def channel(settings: Settings) -> Alertmanager:
    # Results come at least every resync: an alert posted fires until well after the next one.
    firing_for = timedelta(seconds=settings.resync_interval_seconds) * 2 + timedelta(hours=1)
    return Alertmanager(firing_for, Poster(EgressPolicy(parse_networks(settings.webhook_allowed_cidrs))))
