"""What names a Kubernetes Event certcheck writes, shared by the evaluator and the notifier."""

from __future__ import annotations

import hashlib

CERTCHECK_API_VERSION = "certcheck.dev/v1alpha1"


def dedup_key(*parts: str) -> str:
    """The key that names an Event: the same parts, the same Event (a repeat is a no-op)."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
