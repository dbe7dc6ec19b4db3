"""The evaluator's view of the cluster, rebuilt from the objects stream. Pure: no I/O.

Every evaluator replica holds the whole view (it is a cache of the durable stream, not state of its own)
and keeps the CertCheck-to-Secret index. ``apply`` folds one stream message in and says which
CertChecks it affects, so a Secret change is mapped to exactly the CertChecks that select it (or did).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from schemas import subjects
from schemas.messages import (
    CertCheckObserved,
    CertCheckStatus,
    ConfigMapObserved,
    LabelSelector,
    NotificationFailure,
    NotificationSpec,
    ObjectDeleted,
    ObjectEvent,
    SecretObserved,
    status_decoder,
)
from services.domain import model
from services.domain.certs import CertError, Parsed, from_wire
from services.domain.selector import matches, selector_error

CertCheckKey = tuple[str, str]  # (namespace, name)
SecretKey = tuple[str, str]


@dataclass
class CertCheckEntry:
    spec: model.CertCheckSpec
    selector: LabelSelector | None
    resource_version: str
    # The status as written, undecoded until an evaluation needs it (``observed``): most statuses
    # that come in are certcheck's own writes coming back, and an exporter never reads them.
    status_raw: msgspec.Raw
    covered: set[str] = field(default_factory=set)  # Secret names it selects
    notification: NotificationSpec | None = None
    configmap_selector: LabelSelector | None = None
    covered_configmaps: set[str] = field(default_factory=set)
    _decoded: tuple[CertCheckStatus | None] | None = field(default=None, repr=False, compare=False)

    @property
    def observed(self) -> CertCheckStatus | None:
        """The status as written (None: none, or unreadable), decoded once."""
        if self._decoded is None:
            self._decoded = (decode_status(self.status_raw),)
        return self._decoded[0]

    def set_status(self, raw: msgspec.Raw) -> None:
        self.status_raw, self._decoded = raw, None


@dataclass(slots=True)
class SecretEntry:
    view: model.SecretView
    resource_version: str
    covered_by: set[str] = field(default_factory=set)  # CertCheck names that select it
    coverage_at: tuple[int, model.Coverage] | None = None  # (the namespace's coverage epoch, coverage)


@dataclass
class Effects:
    """What one applied message asks the evaluator to do."""

    evaluate: set[CertCheckKey] = field(default_factory=set)
    removed: list[tuple[str, str, str]] = field(default_factory=list)  # (namespace, name, uid)
    released: set[SecretKey] = field(default_factory=set)  # Secrets no CertCheck covers any more
    # Covered Secrets that changed in nothing but their annotations (certcheck's own writes coming back,
    # or someone's edit): whoever evaluates checks they still say what they should.
    annotated: set[SecretKey] = field(default_factory=set)

    def merge(self, other: Effects) -> None:
        self.evaluate |= other.evaluate
        self.removed.extend(other.removed)
        self.released |= other.released
        self.annotated |= other.annotated


def _newer(incoming: str, current: str) -> bool:
    """Whether a resourceVersion is not older than the one held (out-of-order delivery guard)."""
    if incoming.isdigit() and current.isdigit():
        return int(incoming) >= int(current)
    return True


def _stale(previous: SecretEntry | None, uid: str, resource_version: str) -> bool:
    """The incoming version of an object is older than the one held (out-of-order delivery)."""
    return (
        previous is not None
        and previous.view.uid == uid
        and not _newer(resource_version, previous.resource_version)
    )


def _recover(
    certchecks: dict[str, CertCheckEntry],
    object_name: str,
    old_covered_by: set[str],
    covered_by: set[str],
    covered: Callable[[CertCheckEntry], set[str]],
) -> None:
    """Update the other side of the index: each CertCheck's set of the objects it covers."""
    for name in old_covered_by - covered_by:
        covered(certchecks[name]).discard(object_name)
    for name in covered_by - old_covered_by:
        covered(certchecks[name]).add(object_name)


class _FailuresOnly(msgspec.Struct, frozen=True, rename="camel"):
    notification_failures: list[NotificationFailure] | None = None


_failures_decoder = msgspec.json.Decoder(_FailuresOnly | None)


def _failures(raw: msgspec.Raw) -> object:
    """The notifier's failures a status holds, read without decoding the rest of it."""
    try:
        status = _failures_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return status.notification_failures if status else None


def _same_spec(a: model.CertCheckSpec, b: model.CertCheckSpec) -> bool:
    """Whether two specs ask for the same evaluation: equal in every field but the resourceVersion."""
    return dataclasses.replace(a, resource_version=b.resource_version) == b


def _entries(observed: SecretObserved | ConfigMapObserved) -> tuple[model.CertEntry, ...]:
    entries: list[model.CertEntry] = []
    for source in observed.sources:
        if source.error is not None:
            entries.append(model.CertEntry(source.key, 0, CertError(source.error)))
            continue
        parsed = [from_wire(cert) for cert in source.certs] if source.certs else _legacy(source.pem)
        entries.extend(model.CertEntry(source.key, index, facts) for index, facts in enumerate(parsed))
    return tuple(entries)


def _legacy(pem: list[str]) -> list[Parsed]:
    """Certificates of a message an older watcher wrote (PEM, not facts), until it is published again."""
    if not pem:
        return []
    from services.domain.pem import parse_pem_certificate

    return [parse_pem_certificate(block) for block in pem]


def secret_view(observed: SecretObserved) -> model.SecretView:
    return model.SecretView(
        namespace=observed.namespace,
        name=observed.name,
        uid=observed.uid,
        labels=dict(observed.labels),
        annotations=dict(observed.annotations),
        edited_annotations=tuple(observed.edited_annotations),
        entries=_entries(observed),
        resource_version=observed.resource_version,
        type=observed.type,
        other_keys=tuple(observed.other_keys),
    )


def configmap_view(observed: ConfigMapObserved) -> model.SecretView:
    return model.SecretView(
        namespace=observed.namespace,
        name=observed.name,
        uid=observed.uid,
        labels=dict(observed.labels),
        annotations={},
        entries=_entries(observed),
        resource_version=observed.resource_version,
        type="",
        other_keys=tuple(observed.other_keys),
        kind=model.KIND_CONFIGMAP,
    )


def decode_status(raw: msgspec.Raw) -> CertCheckStatus | None:
    """The status as written; anything unreadable counts as no status (it will be rewritten)."""
    try:
        status: CertCheckStatus | None = status_decoder.decode(raw)
        return status
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError:
        return None


class View:
    def __init__(self, effects_memory: int = 100_000) -> None:
        """``effects_memory``: how many messages' effects are kept for the work consumer to take (0: none,
        for a view nobody evaluates from, the exporter's)."""
        self.seq = 0
        # Effects are kept only for messages after this one: those up to it were acknowledged already
        # (the start-up evaluation covers them), and would be kept for nobody.
        self.effects_after = 0
        self.certchecks: dict[str, dict[str, CertCheckEntry]] = {}
        self.secrets: dict[str, dict[str, SecretEntry]] = {}
        self.configmaps: dict[str, dict[str, SecretEntry]] = {}  # read-only sources, never annotated
        self._effects: OrderedDict[int, Effects] = OrderedDict()
        # Bumped whenever a CertCheck of the namespace changes which Secrets it covers, or its
        # threshold: a Secret's coverage, computed once, holds until then (or until the Secret changes).
        self._coverage_epochs: dict[str, int] = {}
        self._effects_memory = effects_memory

    # --- queries -------------------------------------------------------------------------------

    def certcheck(self, key: CertCheckKey) -> CertCheckEntry | None:
        return self.certchecks.get(key[0], {}).get(key[1])

    def size(self) -> dict[str, int]:
        """How many objects of each kind the view holds."""
        return {
            subjects.KIND_CERTCHECK: sum(len(entries) for entries in self.certchecks.values()),
            subjects.KIND_SECRET: sum(len(entries) for entries in self.secrets.values()),
            subjects.KIND_CONFIGMAP: sum(len(entries) for entries in self.configmaps.values()),
        }

    def secret(self, key: SecretKey) -> SecretEntry | None:
        return self.secrets.get(key[0], {}).get(key[1])

    def all_certchecks(self) -> Iterator[CertCheckKey]:
        for namespace, entries in self.certchecks.items():
            for name in entries:
                yield (namespace, name)

    def uncovered_annotated(self) -> Iterator[SecretKey]:
        """Secrets that carry certcheck's annotations although no CertCheck covers them."""
        for namespace, entries in self.secrets.items():
            for name, entry in entries.items():
                if not entry.covered_by and entry.view.annotations:
                    yield (namespace, name)

    def effects_of(self, seq: int) -> Effects | None:
        return self._effects.get(seq)

    def forget_effects(self, seqs: Iterable[int]) -> None:
        """The effects of these messages were acted on and the messages acknowledged."""
        for seq in seqs:
            self._effects.pop(seq, None)

    def coverage(self, namespace: str, secret_name: str) -> model.Coverage:
        entry = self.secrets[namespace][secret_name]
        epoch = self._coverage_epochs.get(namespace, 0)
        if entry.coverage_at is not None and entry.coverage_at[0] == epoch:
            return entry.coverage_at[1]
        names = tuple(sorted(entry.covered_by))
        thresholds = [self.certchecks[namespace][n].spec.threshold_days for n in names]
        coverage = model.Coverage(names, max(thresholds, default=0))
        entry.coverage_at = (epoch, coverage)
        return coverage

    def inputs(self, key: CertCheckKey) -> tuple[list[model.SecretView], dict[str, model.Coverage]]:
        """The selected Secrets of a CertCheck and each one's coverage: what an evaluation takes."""
        entry = self.certchecks[key[0]][key[1]]
        namespace_secrets = self.secrets.get(key[0], {})
        selected = [namespace_secrets[name].view for name in sorted(entry.covered)]
        coverage = {view.name: self.coverage(key[0], view.name) for view in selected}
        namespace_configmaps = self.configmaps.get(key[0], {})
        selected += [namespace_configmaps[name].view for name in sorted(entry.covered_configmaps)]
        return selected, coverage

    # --- folding the stream in ----------------------------------------------------------------------

    def apply(self, seq: int, event: ObjectEvent) -> Effects:
        if isinstance(event, SecretObserved):
            effects = self._apply_secret(event)
        elif isinstance(event, ConfigMapObserved):
            effects = self._apply_configmap(event)
        elif isinstance(event, CertCheckObserved):
            effects = self._apply_certcheck(event)
        elif event.object_kind == subjects.KIND_SECRET:
            effects = self._delete_secret(event)
        elif event.object_kind == subjects.KIND_CONFIGMAP:
            effects = self._delete_configmap(event)
        else:
            effects = self._delete_certcheck(event)
        self.seq = max(self.seq, seq)
        if seq > self.effects_after and self._effects_memory > 0:
            self._effects[seq] = effects
            while len(self._effects) > self._effects_memory:
                self._effects.popitem(last=False)
        return effects

    @staticmethod
    def _selects(entry: CertCheckEntry, labels: dict[str, str], configmap: bool = False) -> bool:
        """Whether the CertCheck selects an object with these labels (a ConfigMap by its own selector)."""
        selector = entry.configmap_selector if configmap else entry.selector
        return selector is not None and entry.spec.selector_error is None and matches(selector, labels)

    def _apply_configmap(self, event: ConfigMapObserved) -> Effects:
        namespace_configmaps = self.configmaps.setdefault(event.namespace, {})
        previous = namespace_configmaps.get(event.name)
        if _stale(previous, event.uid, event.resource_version):
            return Effects()
        view = configmap_view(event)
        certchecks = self.certchecks.get(event.namespace, {})
        covered_by = {
            n for n, entry in certchecks.items() if self._selects(entry, view.labels, configmap=True)
        }
        old_covered_by = previous.covered_by if previous else set()
        _recover(certchecks, event.name, old_covered_by, covered_by, lambda c: c.covered_configmaps)
        namespace_configmaps[event.name] = SecretEntry(view, event.resource_version, covered_by)
        if previous and (previous.view.uid, previous.view.entries) == (view.uid, view.entries):
            return Effects(evaluate={(event.namespace, n) for n in covered_by ^ old_covered_by})
        return Effects(evaluate={(event.namespace, n) for n in covered_by | old_covered_by})

    def _delete_configmap(self, event: ObjectDeleted) -> Effects:
        previous = self.configmaps.get(event.namespace, {}).pop(event.name, None)
        if previous is None:
            return Effects()
        certchecks = self.certchecks.get(event.namespace, {})
        for name in previous.covered_by:
            certchecks[name].covered_configmaps.discard(event.name)
        return Effects(evaluate={(event.namespace, n) for n in previous.covered_by})

    def _apply_secret(self, event: SecretObserved) -> Effects:
        namespace_secrets = self.secrets.setdefault(event.namespace, {})
        previous = namespace_secrets.get(event.name)
        if _stale(previous, event.uid, event.resource_version):
            return Effects()
        view = secret_view(event)
        certchecks = self.certchecks.get(event.namespace, {})
        covered_by = {name for name, entry in certchecks.items() if self._selects(entry, view.labels)}
        old_covered_by = previous.covered_by if previous else set()
        _recover(certchecks, event.name, old_covered_by, covered_by, lambda c: c.covered)
        entry = SecretEntry(view, event.resource_version, covered_by)
        namespace_secrets[event.name] = entry
        effects = Effects()
        content_changed = previous is None or (
            previous.view.uid,
            previous.view.labels,
            previous.view.entries,
        ) != (view.uid, view.labels, view.entries)
        if content_changed:
            effects.evaluate = {(event.namespace, n) for n in covered_by | old_covered_by}
        elif covered_by:
            effects.annotated.add((event.namespace, event.name))
        if not covered_by and view.annotations:
            effects.released.add((event.namespace, event.name))
        return effects

    def _delete_secret(self, event: ObjectDeleted) -> Effects:
        previous = self.secrets.get(event.namespace, {}).pop(event.name, None)
        if previous is None:
            return Effects()
        certchecks = self.certchecks.get(event.namespace, {})
        for name in previous.covered_by:
            certchecks[name].covered.discard(event.name)
        return Effects(evaluate={(event.namespace, n) for n in previous.covered_by})

    def _apply_certcheck(self, event: CertCheckObserved) -> Effects:
        namespace_certchecks = self.certchecks.setdefault(event.namespace, {})
        previous = namespace_certchecks.get(event.name)
        if (
            previous
            and previous.spec.uid == event.uid
            and not _newer(event.resource_version, previous.resource_version)
        ):
            return Effects()
        spec = model.CertCheckSpec(
            namespace=event.namespace,
            name=event.name,
            uid=event.uid,
            generation=event.generation,
            threshold_days=event.threshold_days,
            selector_error=selector_error(event.selector, event.configmap_selector),
            resource_version=event.resource_version,
            keys=tuple(event.keys or ()),
        )
        status_raw = event.status.copy()  # not a view of the whole message: that is not kept
        if (
            previous
            and _same_spec(previous.spec, spec)
            and (previous.selector, previous.configmap_selector) == (event.selector, event.configmap_selector)
        ):
            # Only the status changed (our own write coming back): nothing to re-evaluate, unless the
            # notifier recorded a change in its failures (the NotificationFailed condition follows them).
            failures_changed = _failures(previous.status_raw) != _failures(status_raw)
            previous.spec = spec
            previous.set_status(status_raw)
            previous.notification = event.notification
            if failures_changed:
                return Effects(evaluate={(event.namespace, event.name)})
            previous.resource_version = event.resource_version
            return Effects()
        if previous and previous.spec.uid != event.uid:
            self._delete_certcheck(
                ObjectDeleted(
                    subjects.KIND_CERTCHECK,
                    event.namespace,
                    event.name,
                    previous.spec.uid,
                    previous.resource_version,
                )
            )
        self._coverage_changed(event.namespace)
        entry = CertCheckEntry(
            spec,
            event.selector,
            event.resource_version,
            status_raw,
            notification=event.notification,
            configmap_selector=event.configmap_selector,
        )
        namespace_certchecks[event.name] = entry
        old_covered = previous.covered if previous and previous.spec.uid == event.uid else set()
        namespace_secrets = self.secrets.get(event.namespace, {})
        entry.covered = {n for n, s in namespace_secrets.items() if self._selects(entry, s.view.labels)}
        effects = Effects(evaluate={(event.namespace, event.name)})
        threshold_changed = previous is not None and previous.spec.threshold_days != spec.threshold_days
        touched = (entry.covered ^ old_covered) | (entry.covered if threshold_changed else set())
        for secret_name in old_covered - entry.covered:
            namespace_secrets[secret_name].covered_by.discard(event.name)
        for secret_name in entry.covered - old_covered:
            namespace_secrets[secret_name].covered_by.add(event.name)
        self._neighbours(event.namespace, touched, effects)
        self._cover_configmaps(event.namespace, event.name, entry, previous)
        return effects

    def _cover_configmaps(
        self, namespace: str, name: str, entry: CertCheckEntry, previous: CertCheckEntry | None
    ) -> None:
        namespace_configmaps = self.configmaps.get(namespace, {})
        old = previous.covered_configmaps if previous and previous.spec.uid == entry.spec.uid else set()
        entry.covered_configmaps = {
            n for n, c in namespace_configmaps.items() if self._selects(entry, c.view.labels, configmap=True)
        }
        for configmap_name in old - entry.covered_configmaps:
            namespace_configmaps[configmap_name].covered_by.discard(name)
        for configmap_name in entry.covered_configmaps - old:
            namespace_configmaps[configmap_name].covered_by.add(name)

    def _delete_certcheck(self, event: ObjectDeleted) -> Effects:
        previous = self.certchecks.get(event.namespace, {}).pop(event.name, None)
        if previous is None:
            return Effects()
        self._coverage_changed(event.namespace)
        namespace_secrets = self.secrets.get(event.namespace, {})
        for secret_name in previous.covered:
            namespace_secrets[secret_name].covered_by.discard(event.name)
        namespace_configmaps = self.configmaps.get(event.namespace, {})
        for configmap_name in previous.covered_configmaps:
            namespace_configmaps[configmap_name].covered_by.discard(event.name)
        effects = Effects(removed=[(event.namespace, event.name, previous.spec.uid)])
        self._neighbours(event.namespace, previous.covered, effects)
        return effects

    def _coverage_changed(self, namespace: str) -> None:
        self._coverage_epochs[namespace] = self._coverage_epochs.get(namespace, 0) + 1

    def _neighbours(self, namespace: str, touched: set[str], effects: Effects) -> None:
        """Secrets whose coverage changed: re-evaluate their other CertChecks, or release them."""
        namespace_secrets = self.secrets.get(namespace, {})
        for secret_name in touched:
            secret = namespace_secrets.get(secret_name)
            if secret is None:
                continue
            if secret.covered_by:
                effects.evaluate |= {(namespace, n) for n in secret.covered_by}
            elif secret.view.annotations:
                effects.released.add((namespace, secret_name))
