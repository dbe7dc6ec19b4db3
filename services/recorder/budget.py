"""How many routine Events a namespace gets when thousands of certificates change at once. Pure.

A CA rotation replaces every certificate it signed within minutes: one Normal ``Renewed`` Event per
Secret would be thousands of writes, crowding out the API server and burying the Events that matter.
Like client-go's event spam filter (a token bucket per source and object), each namespace has a bucket
for the Normal Events on Secrets: ``burst`` at once, then one per ``refill_seconds``. What it holds back
is not lost: the CertCheck's own summary Event says how many were renewed, and which first. Warnings
(a certificate expiring, expired or unreadable) and the CertCheck's Events are never held back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.messages import EventIntent

DEFAULT_BURST = 25
DEFAULT_REFILL_SECONDS = 5.0
MAX_NAMESPACES = 10_000  # buckets kept; the fullest (oldest untouched) go first


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class EventBudget:
    burst: int = DEFAULT_BURST
    refill_seconds: float = DEFAULT_REFILL_SECONDS
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def allows(self, intent: EventIntent, now: float) -> bool:
        """Whether to write this Event now (``now``: a monotonic clock). Spends a token if it is a
        routine one."""
        if intent.type != "Normal" or intent.involved_kind != "Secret" or self.burst <= 0:
            return True
        bucket = self._buckets.pop(intent.namespace, None) or _Bucket(float(self.burst), now)
        self._buckets[intent.namespace] = bucket  # most recently used last
        refill = (now - bucket.at) / self.refill_seconds if self.refill_seconds > 0 else float(self.burst)
        bucket.tokens, bucket.at = min(float(self.burst), bucket.tokens + refill), now
        while len(self._buckets) > MAX_NAMESPACES:
            del self._buckets[next(iter(self._buckets))]
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True
