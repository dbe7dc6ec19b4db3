"""Time as certcheck writes and reads it: RFC 3339 in UTC, for any date a certificate can hold.

X.509 dates run from year 1 to year 9999 (``99991231235959Z`` is RFC 5280's "no well-defined
expiration"). Python's ``datetime`` holds exactly that range, so arithmetic at either end overflows:
``shift`` says so with None instead of raising, and ``rfc3339`` writes four-digit years everywhere
(``strftime("%Y")`` writes year 1 as "1" on glibc).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache


@lru_cache(maxsize=1 << 17)  # a certificate's dates are written again at every evaluation of it
def rfc3339(moment: datetime) -> str:
    """``2026-12-03T05:47:57Z``: UTC, whole seconds, a four-digit year."""
    try:
        utc = moment.astimezone(UTC) if moment.tzinfo else moment
    except OverflowError:  # another zone's offset pushes it past year 1 or 9999: keep the wall time
        utc = moment
    return utc.replace(tzinfo=None, microsecond=0).isoformat() + "Z"


def parse_rfc3339(text: str | None) -> datetime | None:
    """The moment an RFC 3339 text names (UTC if it names no zone), or None if it names none."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def shift(moment: datetime, delta: timedelta) -> datetime | None:
    """``moment + delta``, or None where that falls outside year 1 to 9999."""
    try:
        return moment + delta
    except OverflowError:
        return None


MAX_DAYS = timedelta.max.days


@lru_cache(maxsize=1024)
def days(count: int) -> timedelta:
    """A span of ``count`` days, clamped to what a timedelta holds (a threshold may be any integer)."""
    return timedelta(days=max(-MAX_DAYS, min(MAX_DAYS, count)))
