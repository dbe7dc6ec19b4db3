"""Durations as CertCheck specs write them (``24h``, ``7d``), and reminders: a notification target's
``remindAt`` marks before a certificate's notAfter, each told once. Pure: no I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from schemas.messages import NotificationSpec
from services.domain.times import shift

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


def offsets(marks: Iterable[str]) -> tuple[timedelta, ...]:
    """The readable marks (the CRD refuses others; an older object's are skipped), largest first."""
    found = set()
    for mark in marks:
        try:
            offset = parse_duration(mark)
        except ValueError:
            continue
        if offset is not None:
            found.add(offset)
    return tuple(sorted(found, reverse=True))


def reminder_offsets(notification: NotificationSpec | None) -> tuple[timedelta, ...]:
    """Every mark any target of a CertCheck reminds at: when it must be evaluated."""
    return offsets(
        mark for target in (notification.targets if notification else ()) for mark in target.remind_at
    )


def next_reminder(
    not_afters: Iterable[datetime], marks: Sequence[timedelta], now: datetime
) -> datetime | None:
    """The first moment after ``now`` at which a certificate passes a mark (notAfter - mark)."""
    if not marks:
        return None
    upcoming = [
        moment
        for not_after in not_afters
        for mark in marks
        if (moment := shift(not_after, -mark)) and moment > now
    ]
    return min(upcoming, default=None)


def due_reminders(not_after: datetime, marks: Iterable[str], now: datetime) -> frozenset[str]:
    """The marks a certificate has passed by ``now`` (before it expired: an expired one is told as such)."""
    if now > not_after:
        return frozenset()
    return frozenset(
        mark
        for mark in marks
        if (offset := _offset(mark)) is not None and (at := shift(not_after, -offset)) and now >= at
    )


def _offset(mark: str) -> timedelta | None:
    try:
        return parse_duration(mark)
    except ValueError:
        return None
