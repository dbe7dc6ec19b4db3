"""What certcheck knows of the objects it watches, as every service reads it: a Secret's (or
ConfigMap's) certificate entries, a CertCheck's spec, which CertChecks cover a Secret, and which of a
Secret's keys a CertCheck reads. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from services.domain.certs import CertError, CertFacts
from services.domain.hygiene import DEFAULT_POLICY, Policy
from services.domain.states import RENEWAL_GRACE, renewal_overdue_at
from services.domain.times import shift

KUBERNETES_KIND_SECRET = "Secret"
KUBERNETES_KIND_CONFIGMAP = "ConfigMap"


@dataclass(frozen=True, slots=True)
class CertEntry:
    """One certificate (or one unreadable key) of a Secret."""

    key: str
    index: int
    parsed: CertFacts | CertError


@dataclass(frozen=True, slots=True)
class SecretView:
    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]  # certcheck-owned only
    entries: tuple[CertEntry, ...]
    resource_version: str = ""
    type: str = "kubernetes.io/tls"
    other_keys: tuple[str, ...] = ()  # keys without any certificate
    kind: str = "Secret"  # or "ConfigMap": read only, certcheck never writes to a ConfigMap
    edited_annotations: tuple[str, ...] = ()  # certcheck's annotations someone else wrote last
    managed_by: str | None = None  # the cert-manager Certificate that renews it
    renewal_time: datetime | None = None  # that Certificate's status.renewalTime, when certcheck reads it
    # What evaluations worked out from this view's content and may reuse while it holds: a CertCheck over
    # thousands of Secrets re-rates only the one that changed. Not copied by replace(); shared by a newer
    # version of the object with the same content (``with_content_of``).
    memo: dict[object, tuple[datetime, datetime, object]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )


def with_content_of(view: SecretView, earlier: SecretView) -> SecretView:
    """``view``, a newer version of ``earlier`` with the same content (its certificates, what rates
    them), taking over ``earlier``'s entries and memo: certcheck's own annotations coming back then
    cost an evaluation no re-rating, and the two versions hold one copy of the certificates."""
    shared = dataclasses.replace(view, entries=earlier.entries)
    object.__setattr__(shared, "memo", earlier.memo)
    return shared


@dataclass(frozen=True, slots=True)
class CertCheckSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    threshold_days: int
    selector_error: str | None = None
    resource_version: str = ""
    keys: tuple[str, ...] = ()  # data keys to read (names or glob patterns); () = the defaults
    policy: Policy = DEFAULT_POLICY  # what is weak


@dataclass(frozen=True, slots=True)
class Coverage:
    """Which CertChecks select a Secret, the largest threshold among them and the strictest policy."""

    certchecks: tuple[str, ...]
    max_threshold_days: int
    policy: Policy = DEFAULT_POLICY
    # A memo key of every selected Secret at every evaluation: hashed once, not field by field each time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.certchecks, self.max_threshold_days, self.policy)))

    def __hash__(self) -> int:
        return self._hash


MANAGED_KEY = "tls.crt"  # cert-manager renews the leaf, the first certificate of tls.crt


def renew_by(secret: SecretView, entry: CertEntry) -> datetime | None:
    """When the certificate of ``entry`` should have been renewed, if cert-manager manages it: its
    Certificate's renewalTime (plus the grace) when known and within this certificate's validity (one
    outside it speaks of another certificate: the one just replaced, say), else cert-manager's default."""
    if secret.managed_by is None or entry.key != MANAGED_KEY or entry.index != 0:
        return None
    facts = entry.parsed
    if not isinstance(facts, CertFacts):
        return None
    planned = secret.renewal_time
    if planned is not None and facts.not_before <= planned <= facts.not_after:
        return shift(planned, RENEWAL_GRACE)
    return renewal_overdue_at(facts)


def entry_label(kind: str, name: str, key: str, index: int) -> str:
    """How a certificate entry is named in messages: ``secret/key[0]``, ``ConfigMap/bundle/key[0]``."""
    prefix = "" if kind == KUBERNETES_KIND_SECRET else f"{kind}/"
    return f"{prefix}{name}/{key}[{index}]"


TLS_DEFAULT_KEYS = ("tls.crt", "ca.crt")
OTHER_DEFAULT_KEYS = ("*",)  # every key in which a certificate was found


@lru_cache(maxsize=1024)
def _key_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a key matches any of ``patterns``: names are looked up, only globs go through fnmatch."""
    if "*" in patterns:
        return lambda key: True
    globs = tuple(p for p in patterns if any(c in p for c in "*?["))
    names = frozenset(patterns) - frozenset(globs)
    if not globs:
        return names.__contains__
    return lambda key: key in names or any(fnmatch.fnmatchcase(key, g) for g in globs)


def selected_entries(secret: SecretView, patterns: Sequence[str]) -> list[CertEntry]:
    """The entries of the keys a CertCheck reads; an exact key name that holds no certificate is Invalid."""
    if not patterns or secret.kind != KUBERNETES_KIND_SECRET:  # spec.keys speaks of Secrets' keys
        patterns = TLS_DEFAULT_KEYS if secret.type == "kubernetes.io/tls" else OTHER_DEFAULT_KEYS
    selected = _key_matcher(tuple(patterns))
    entries = [e for e in secret.entries if selected(e.key)]
    for name in patterns:
        if name in secret.other_keys:
            entries.append(CertEntry(name, 0, CertError(f"no certificate in key {name}")))
    return entries
