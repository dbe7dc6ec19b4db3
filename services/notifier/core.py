"""What to notify, and how a webhook receiver checks it came from certcheck. Pure: no I/O, no clock.

The notifier's durable state per CertCheck (kept in a KV bucket) says, per target, which state each
certificate was last seen in and when it was last notified, plus at most one pending delivery.
"""

from __future__ import annotations

import hashlib
import hmac
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
from services.domain.reminders import due_reminders, parse_duration
from services.domain.times import parse_rfc3339, rfc3339


class Seen(msgspec.Struct, frozen=True):
    state: str
    notified_at: str | None = None  # when a notification about this state was last sent
    reminded: list[str] = []  # the remindAt marks told of the certificate with this notAfter
    reminded_for: str | None = None


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
        reminded = set(before.reminded) if before and before.reminded_for == entry.not_after else set()
        passed = _passed(target, entry, now)
        if change is None and passed - reminded:
            change = "reminder"  # a mark passed: told once (a notice sent anyway tells it too)
        if change:
            notices.append(_notice(entry, change, before.state if before else None))
        told = sorted(reminded | passed)
        remembered[key] = Seen(
            state,
            stamp if change else (before.notified_at if before else None),
            told,
            entry.not_after if told else None,
        )
    return notices, remembered


def _passed(target: NotificationTarget, entry: CertificateStatus, now: datetime) -> frozenset[str]:
    not_after = parse_rfc3339(entry.not_after) if target.remind_at else None
    return due_reminders(not_after, target.remind_at, now) if not_after else frozenset()


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
