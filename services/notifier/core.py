"""What to notify, and how a webhook receiver checks it came from certcheck. Pure: no I/O, no clock.

The notifier's durable state per CertCheck (kept in a KV bucket) says, per target, which state each
certificate was last seen in and when it was last notified, plus at most one pending delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from schemas.messages import (
    CertificateNotice,
    CertificateStatus,
    ExpiryNotification,
    NotificationFailure,
    NotificationTarget,
)
from services.domain.model import entry_label
from services.domain.times import parse_rfc3339, rfc3339

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_REPEAT = timedelta(days=36_500)


def parse_duration(text: str | None) -> timedelta | None:
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d)")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds > MAX_REPEAT.total_seconds():
        raise ValueError(f"duration {text!r} is longer than {MAX_REPEAT.days} days")
    return timedelta(seconds=seconds)


class Seen(msgspec.Struct, frozen=True):
    state: str
    notified_at: str | None = None  # when a notification about this state was last sent


class Pending(msgspec.Struct, frozen=True):
    delivery_id: str
    notification: ExpiryNotification
    attempts: int = 0
    # Which replica is sending it, until when (RFC 3339): no two send the same delivery at once.
    claimed_by: str = ""
    claimed_until: str = ""


class TargetState(msgspec.Struct):
    seen: dict[str, Seen] = {}
    pending: Pending | None = None
    failure: str | None = None  # why the last delivery failed for good
    failing_since: str | None = None


class NotifyState(msgspec.Struct):
    uid: str = ""
    targets: dict[str, TargetState] = {}
    # The failures the CertCheck's status shows, as last written: reported again until they match.
    reported: list[NotificationFailure] = []


def entry_id(entry: CertificateStatus) -> str:
    return entry_label(entry.kind, entry.name, entry.key, entry.index)


def plan(
    target: NotificationTarget, entries: Sequence[CertificateStatus], seen: dict[str, Seen], now: datetime
) -> tuple[list[CertificateNotice], dict[str, Seen]]:
    """The notices to send for a target, and what to remember afterwards."""
    try:
        repeat = parse_duration(target.repeat_interval)
    except ValueError:
        repeat = None  # the CRD schema refuses such intervals; an older object notifies on changes only
    stamp = rfc3339(now)
    notices: list[CertificateNotice] = []
    remembered: dict[str, Seen] = {}
    for entry in entries:
        key, state = entry_id(entry), str(entry.state)
        before = seen.get(key)
        change = None
        if state in target.states:
            if before is None or before.state != state:
                change = "firing"
            elif repeat and _due_again(before.notified_at, repeat, now):
                change = "repeat"
        elif target.send_resolved and before is not None and before.state in target.states:
            change = "resolved"
        if change:
            notices.append(_notice(entry, change, before.state if before else None))
        remembered[key] = Seen(state, stamp if change else (before.notified_at if before else None))
    return notices, remembered


def _due_again(notified_at: str | None, repeat: timedelta, now: datetime) -> bool:
    notified = parse_rfc3339(notified_at)
    return notified is not None and now - notified >= repeat


def _notice(entry: CertificateStatus, change: str, previous: str | None) -> CertificateNotice:
    return CertificateNotice(
        secret=entry.name,
        kind=entry.kind,
        key=entry.key,
        index=entry.index,
        state=str(entry.state),
        change=change,
        previous_state=previous,
        not_after=entry.not_after,
        days_remaining=entry.days_remaining,
        subject=entry.subject,
        issuer=entry.issuer,
        serial_number=entry.serial_number,
        reason=entry.reason,
    )


def delivery_id(
    namespace: str, certcheck: str, target: str, notices: Sequence[CertificateNotice], at: str
) -> str:
    content = msgspec.json.encode([namespace, certcheck, target, at, list(notices)])
    return hashlib.sha256(content).hexdigest()[:24]


SIGNATURE_HEADER = "X-Certcheck-Signature"
TIMESTAMP_HEADER = "X-Certcheck-Timestamp"
DELIVERY_HEADER = "X-Certcheck-Delivery"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex, prefixed "sha256=" (replay-safe with the timestamp)."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
