"""The evaluator's view of the cluster, rebuilt from the objects stream. Pure: no I/O.

Every evaluator replica holds the whole view (it is a cache of the durable stream, not state of its own)
and keeps the index between CertChecks and the objects their certificates are read from (Secrets,
ConfigMaps: one ``SourceIndex`` a kind). ``apply`` folds one stream message in and says which
CertChecks it affects, so a Secret change is mapped to exactly the CertChecks that select it (or did).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from schemas import subjects
from schemas.messages import (
    CertCheckObserved,
    CertCheckStatus,
    CertificateObserved,
    ClusterSourceObserved,
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
from services.domain.clusterchecks import CLUSTER_SOURCES, ClusterSourceKind
from services.domain.hygiene import policy_of, strictest
from services.domain.selector import matches, selector_error

CertCheckKey = tuple[str, str]  # (namespace, name)
SecretKey = tuple[str, str]
SourceObserved = SecretObserved | ConfigMapObserved | ClusterSourceObserved
Observed = TypeVar("Observed", SecretObserved, ConfigMapObserved, ClusterSourceObserved)


@dataclass(frozen=True)
class SourceKind(Generic[Observed]):
    """A kind of object certificates are read from, and what sets it apart from the others."""

    name: str  # as the stream names it (subjects.KIND_SECRET, ...)
    message: type[Observed]
    view_of: Callable[[Observed], model.SecretView]
    selector_of: Callable[[CertCheckObserved], LabelSelector | None]  # which of them a CertCheck selects
    # What of a view calls for evaluating again the CertChecks that select it (coverage aside, which
    # is followed on its own): a change in anything else (annotations, say) calls for nothing.
    content: Callable[[model.SecretView], tuple[object, ...]]
    # Whether certcheck writes its annotations onto objects of this kind (Secrets only: Effects.annotated
    # and released name Secrets): their coverage by CertChecks (the largest threshold) is then part of
    # what an evaluation writes, so a change of coverage re-evaluates the neighbours that share them.
    annotated: bool = False


@dataclass
class CertCheckEntry:
    spec: model.CertCheckSpec
    selectors: dict[str, LabelSelector | None]  # source kind -> which of its objects it selects
    resource_version: str
    # The status as written, undecoded until an evaluation needs it (``observed``): most statuses
    # that come in are certcheck's own writes coming back, and an exporter never reads them.
    status_raw: msgspec.Raw
    covered: dict[str, set[str]] = field(default_factory=dict)  # source kind -> names it selects
    notification: NotificationSpec | None = None
    # The sources (kind, name) it covered or covers whose view changed since an evaluation last took
    # them, and what that evaluation kept to start the next from (see services/evaluator/incremental.py;
    # a new spec is a new entry, which starts from nothing).
    touched: set[tuple[str, str]] = field(default_factory=set)
    kept: object = None
    takes: int = 0  # how many evaluations took what was kept: one put back after a later take is stale
    _decoded: tuple[CertCheckStatus | None] | None = field(default=None, repr=False, compare=False)

    @property
    def observed(self) -> CertCheckStatus | None:
        """The status as written (None: none, or unreadable), decoded once."""
        if self._decoded is None:
            self._decoded = (decode_status(self.status_raw),)
        return self._decoded[0]

    def set_status(self, raw: msgspec.Raw) -> None:
        self.status_raw, self._decoded = raw, None

    def selects(self, kind: str, labels: dict[str, str]) -> bool:
        """Whether it selects an object of this kind with these labels."""
        selector = self.selectors.get(kind)
        return selector is not None and self.spec.selector_error is None and matches(selector, labels)

    def covered_of(self, kind: str) -> set[str]:
        return self.covered.setdefault(kind, set())

    def take(self) -> tuple[set[tuple[str, str]], object, int]:
        """What changed since the last evaluation took it, what that evaluation kept (None: nothing to
        start from), and the take's number to put it back under."""
        touched, kept = self.touched, self.kept
        self.touched, self.kept = set(), None
        self.takes += 1
        return touched, kept, self.takes

    def put_back(self, kept: object, take: int) -> None:
        """Keep what an evaluation that stood built, unless a later evaluation took meanwhile (what it
        built does not know the changes that one took)."""
        if take == self.takes:
            self.kept = kept


def _touch(certchecks: dict[str, CertCheckEntry], names: Iterable[str], source: tuple[str, str]) -> None:
    for name in names:
        entry = certchecks.get(name)
        if entry is not None:
            entry.touched.add(source)


@dataclass(slots=True)
class SourceEntry:
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
    # CertChecks whose status alone changed (certcheck's own write coming back, or someone's): whoever
    # evaluates checks it still says what was told.
    statuses: set[CertCheckKey] = field(default_factory=set)

    def describe(self) -> str:
        """For a debug line: which CertChecks to evaluate, remove, which Secrets to release or check."""
        parts = [
            f"evaluate {', '.join(sorted(f'{ns}/{name}' for ns, name in self.evaluate))}"
            if self.evaluate
            else "",
            f"removed {', '.join(f'{ns}/{name}' for ns, name, _ in self.removed)}" if self.removed else "",
            f"release {', '.join(sorted(f'{ns}/{name}' for ns, name in self.released))}"
            if self.released
            else "",
            "annotations to check" if self.annotated else "",
            "statuses to check" if self.statuses else "",
        ]
        return "; ".join(part for part in parts if part) or "nothing to do"

    def merge(self, other: Effects) -> None:
        self.evaluate |= other.evaluate
        self.removed.extend(other.removed)
        self.released |= other.released
        self.annotated |= other.annotated
        self.statuses |= other.statuses


def _newer(incoming: str, current: str) -> bool:
    """Whether a resourceVersion is not older than the one held (out-of-order delivery guard)."""
    if incoming.isdigit() and current.isdigit():
        return int(incoming) >= int(current)
    return True


def _stale(previous: SourceEntry | None, uid: str, resource_version: str) -> bool:
    """The incoming version of an object is older than the one held (out-of-order delivery)."""
    return (
        previous is not None
        and previous.view.uid == uid
        and not _newer(resource_version, previous.resource_version)
    )


def _relink(member: str, old: set[str], new: set[str], links_of: Callable[[str], set[str]]) -> None:
    """Keep the other side of the index in step: ``member`` was linked to the names in ``old`` and is
    now to those in ``new`` (each name's set of links is ``links_of(name)``)."""
    for name in old - new:
        links_of(name).discard(member)
    for name in new - old:
        links_of(name).add(member)


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


def _entries(observed: SourceObserved) -> tuple[model.CertEntry, ...]:
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
    return _source_view(
        observed,
        annotations=dict(observed.annotations),
        edited_annotations=tuple(observed.edited_annotations),
        secret_type=observed.type,
        other_keys=tuple(observed.other_keys),
        managed_by=observed.certificate_name[:253] if observed.certificate_name else None,
    )


def configmap_view(observed: ConfigMapObserved) -> model.SecretView:
    return _source_view(
        observed,
        annotations={},
        secret_type="",
        kind=model.KUBERNETES_KIND_CONFIGMAP,
        other_keys=tuple(observed.other_keys),
    )


def cluster_source_view(observed: ClusterSourceObserved) -> model.SecretView:
    kind = next(source.kind for source in CLUSTER_SOURCES if source.token == observed.object_kind)
    return _source_view(observed, annotations={}, secret_type="", kind=kind)


def _source_view(
    observed: SourceObserved,
    *,
    annotations: dict[str, str],
    secret_type: str,
    kind: str = model.KUBERNETES_KIND_SECRET,
    edited_annotations: tuple[str, ...] = (),
    other_keys: tuple[str, ...] = (),
    managed_by: str | None = None,
) -> model.SecretView:
    """The view of an object of any source kind: what every kind's message holds, and the rest as given."""
    return model.SecretView(
        namespace=observed.namespace,
        name=observed.name,
        uid=observed.uid,
        labels=dict(observed.labels),
        annotations=annotations,
        edited_annotations=edited_annotations,
        entries=_entries(observed),
        resource_version=observed.resource_version,
        type=secret_type,
        other_keys=other_keys,
        kind=kind,
        managed_by=managed_by,
    )


SECRETS = SourceKind(
    subjects.KIND_SECRET,
    SecretObserved,
    secret_view,
    selector_of=lambda certcheck: certcheck.selector,
    # type and keys without a certificate too: they decide what spec.keys reads (an exact key holding
    # no certificate is Invalid).
    content=lambda view: (
        view.uid,
        view.labels,
        view.entries,
        view.type,
        view.other_keys,
        view.managed_by,  # cert-manager's: when its certificate should be renewed
        view.renewal_time,
    ),
    annotated=True,
)
CONFIGMAPS = SourceKind(
    subjects.KIND_CONFIGMAP,
    ConfigMapObserved,
    configmap_view,
    selector_of=lambda certcheck: certcheck.configmap_selector,
    content=lambda view: (view.uid, view.entries),  # its labels matter only to who selects it
)
_EVERYTHING = LabelSelector()


def _cluster_source_kind(source: ClusterSourceKind) -> SourceKind[ClusterSourceObserved]:
    """Cluster-scoped objects holding CA bundles: every one of them, for a ClusterCertCheck's share that
    names the kind in ``spec.sources`` (see services/domain/clusterchecks.py)."""
    return SourceKind(
        source.token,
        ClusterSourceObserved,
        cluster_source_view,
        selector_of=lambda check: _EVERYTHING if source.token in (check.cluster_sources or ()) else None,
        content=lambda view: (view.uid, view.entries),
    )


# In this order in ``inputs``.
SOURCE_KINDS: tuple[SourceKind[Any], ...] = (
    SECRETS,
    CONFIGMAPS,
    *(_cluster_source_kind(source) for source in CLUSTER_SOURCES),
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


@dataclass
class SourceIndex:
    """The objects of one source kind the view holds (namespace -> name -> entry), each knowing the
    CertChecks that select it; each CertCheck knows them back (``CertCheckEntry.covered``)."""

    kind: SourceKind[Any]
    namespaces: dict[str, dict[str, SourceEntry]] = field(default_factory=dict)
    # What the view knows of an object besides its own message (a Secret's Certificate's renewal time).
    decorate: Callable[[model.SecretView], model.SecretView] = lambda view: view

    def get(self, namespace: str, name: str) -> SourceEntry | None:
        return self.namespaces.get(namespace, {}).get(name)

    def of(self, namespace: str) -> dict[str, SourceEntry]:
        return self.namespaces.get(namespace, {})

    def size(self) -> int:
        return sum(len(entries) for entries in self.namespaces.values())

    def apply(self, event: SourceObserved, certchecks: dict[str, CertCheckEntry]) -> Effects:
        """Fold in a new version of an object; ``certchecks``: those of its namespace."""
        kind = self.kind
        namespace_entries = self.namespaces.setdefault(event.namespace, {})
        previous = namespace_entries.get(event.name)
        if _stale(previous, event.uid, event.resource_version):
            return Effects()
        view = self.decorate(kind.view_of(event))
        unchanged = previous is not None and kind.content(previous.view) == kind.content(view)
        if previous is not None and unchanged:
            view = model.with_content_of(view, previous.view)
        covered_by = {name for name, entry in certchecks.items() if entry.selects(kind.name, view.labels)}
        old_covered_by = previous.covered_by if previous else set()
        _relink(event.name, old_covered_by, covered_by, lambda name: certchecks[name].covered_of(kind.name))
        # Who covers it decides its coverage (the namespace's epoch says when their specs changed).
        coverage_at = (
            previous.coverage_at if previous is not None and previous.covered_by == covered_by else None
        )
        namespace_entries[event.name] = SourceEntry(view, event.resource_version, covered_by, coverage_at)
        _touch(certchecks, covered_by | old_covered_by, (kind.name, event.name))
        # Unchanged, it concerns only the CertChecks that came to select it or stopped.
        concerned = covered_by ^ old_covered_by if unchanged else covered_by | old_covered_by
        effects = Effects(evaluate={(event.namespace, name) for name in concerned})
        if kind.annotated and unchanged and covered_by:
            effects.annotated.add((event.namespace, event.name))
        if kind.annotated and not covered_by and view.annotations:
            effects.released.add((event.namespace, event.name))
        return effects

    def delete(self, event: ObjectDeleted, certchecks: dict[str, CertCheckEntry]) -> Effects:
        """Fold in an object's deletion; ``certchecks``: those of its namespace."""
        previous = self.namespaces.get(event.namespace, {}).pop(event.name, None)
        if previous is None:
            return Effects()
        kind = self.kind.name
        _relink(event.name, previous.covered_by, set(), lambda name: certchecks[name].covered_of(kind))
        _touch(certchecks, previous.covered_by, (kind, event.name))
        return Effects(evaluate={(event.namespace, name) for name in previous.covered_by})

    def cover(self, certcheck: CertCheckEntry, old: set[str]) -> set[str]:
        """Which objects of its namespace the CertCheck covers now (it covered ``old``), on both sides
        of the index."""
        kind, namespace = self.kind.name, certcheck.spec.namespace
        entries = self.of(namespace)
        covered = {name for name, entry in entries.items() if certcheck.selects(kind, entry.view.labels)}
        certcheck.covered[kind] = covered
        _relink(certcheck.spec.name, old, covered, lambda name: entries[name].covered_by)
        return covered

    def uncover(self, namespace: str, certcheck: str, covered: set[str]) -> None:
        """A CertCheck that covered these objects is gone."""
        entries = self.of(namespace)
        _relink(certcheck, covered, set(), lambda name: entries[name].covered_by)

    def neighbours(self, namespace: str, touched: set[str], effects: Effects) -> None:
        """Objects whose coverage changed: re-evaluate their other CertChecks, or release them (certcheck's
        annotations left on an object nobody covers)."""
        entries = self.of(namespace)
        for name in touched:
            entry = entries.get(name)
            if entry is None:
                continue
            if entry.covered_by:
                effects.evaluate |= {(namespace, n) for n in entry.covered_by}
            elif entry.view.annotations:
                effects.released.add((namespace, name))


class View:
    def __init__(self) -> None:
        self.seq = 0
        self.certchecks: dict[str, dict[str, CertCheckEntry]] = {}
        self.sources: dict[str, SourceIndex] = {kind.name: SourceIndex(kind) for kind in SOURCE_KINDS}
        self.secrets = self.sources[SECRETS.name]  # the kind certcheck annotates
        self.secrets.decorate = self._with_renewal_time
        # cert-manager Certificates, per namespace and name: (the Secret they write, its renewal time, rv).
        self.certificates: dict[str, dict[str, tuple[str, datetime | None, str]]] = {}
        self._index_of_message = {
            SecretObserved: self.secrets,
            ConfigMapObserved: self.sources[CONFIGMAPS.name],
        }
        # Bumped whenever a CertCheck of the namespace changes which Secrets it covers, or its
        # threshold: a Secret's coverage, computed once, holds until then (or until the Secret changes).
        self._coverage_epochs: dict[str, int] = {}

    # --- queries -------------------------------------------------------------------------------

    def certcheck(self, key: CertCheckKey) -> CertCheckEntry | None:
        return self.certchecks.get(key[0], {}).get(key[1])

    def size(self) -> dict[str, int]:
        """How many objects of each kind the view holds."""
        certchecks = sum(len(entries) for entries in self.certchecks.values())
        certificates = sum(len(held) for held in self.certificates.values())
        sizes = {subjects.KIND_CERTCHECK: certchecks, subjects.KIND_CERTIFICATE: certificates}
        return sizes | {k: i.size() for k, i in self.sources.items()}

    def secret(self, key: SecretKey) -> SourceEntry | None:
        return self.secrets.get(*key)

    def all_certchecks(self) -> Iterator[CertCheckKey]:
        for namespace, entries in self.certchecks.items():
            for name in entries:
                yield (namespace, name)

    def uncovered_annotated(self) -> Iterator[SecretKey]:
        """Secrets that carry certcheck's annotations although no CertCheck covers them."""
        for namespace, entries in self.secrets.namespaces.items():
            for name, entry in entries.items():
                if not entry.covered_by and entry.view.annotations:
                    yield (namespace, name)

    def coverage(self, namespace: str, secret_name: str) -> model.Coverage:
        entry = self.secrets.namespaces[namespace][secret_name]
        epoch = self._coverage_epochs.get(namespace, 0)
        if entry.coverage_at is not None and entry.coverage_at[0] == epoch:
            return entry.coverage_at[1]
        names = tuple(sorted(entry.covered_by))
        specs = [self.certchecks[namespace][n].spec for n in names]
        coverage = model.Coverage(
            names, max((s.threshold_days for s in specs), default=0), strictest(s.policy for s in specs)
        )
        entry.coverage_at = (epoch, coverage)
        return coverage

    def pending_changes(self, key: CertCheckKey) -> int:
        """How many of a CertCheck's sources changed (if only in their annotations) since its last
        evaluation took them."""
        entry = self.certcheck(key)
        return len(entry.touched) if entry is not None else 0

    def coverage_epoch(self, namespace: str) -> int:
        """Bumped whenever a CertCheck of the namespace changes which sources it covers or its threshold."""
        return self._coverage_epochs.get(namespace, 0)

    def covered_sources(self, key: CertCheckKey) -> Iterator[tuple[str, str]]:
        """Every source (kind, name) the CertCheck covers."""
        entry = self.certchecks[key[0]][key[1]]
        for kind in self.sources:
            for name in entry.covered_of(kind):
                yield (kind, name)

    def inputs_of(
        self, key: CertCheckKey, sources: Iterable[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], model.SecretView | None], dict[str, model.Coverage]]:
        """What ``inputs`` says of these sources (kind, name): each one's view, None when the CertCheck
        does not cover it (any more), and each covered Secret's coverage."""
        namespace, name = key
        entry = self.certchecks[namespace][name]
        views: dict[tuple[str, str], model.SecretView | None] = {}
        coverage: dict[str, model.Coverage] = {}
        for kind, source in sources:
            index = self.sources.get(kind)
            found = index.get(namespace, source) if index is not None else None
            if index is None or found is None or source not in entry.covered_of(kind):
                views[(kind, source)] = None
                continue
            views[(kind, source)] = found.view
            if index.kind.annotated:
                coverage[source] = self.coverage(namespace, source)
        return views, coverage

    def inputs(self, key: CertCheckKey) -> tuple[list[model.SecretView], dict[str, model.Coverage]]:
        """The selected sources of a CertCheck (Secrets, then ConfigMaps) and each Secret's coverage:
        what an evaluation takes."""
        namespace, name = key
        entry = self.certchecks[namespace][name]
        selected: list[model.SecretView] = []
        coverage: dict[str, model.Coverage] = {}
        for index in self.sources.values():
            entries = index.of(namespace)
            views = [entries[source].view for source in sorted(entry.covered_of(index.kind.name))]
            selected += views
            if index.kind.annotated:
                coverage |= {view.name: self.coverage(namespace, view.name) for view in views}
        return selected, coverage

    # --- folding the stream in ----------------------------------------------------------------------

    def apply(self, seq: int, event: ObjectEvent) -> Effects:
        if isinstance(event, CertificateObserved):
            effects = self._apply_certificate(event)
        elif isinstance(event, ObjectDeleted) and event.object_kind == subjects.KIND_CERTIFICATE:
            effects = self._delete_certificate(event)
        elif isinstance(event, SecretObserved | ConfigMapObserved | ClusterSourceObserved):
            certchecks = self.certchecks.get(event.namespace, {})
            index = (
                self.sources[event.object_kind]
                if isinstance(event, ClusterSourceObserved)
                else self._index_of_message[type(event)]
            )
            effects = index.apply(event, certchecks)
        elif isinstance(event, CertCheckObserved):
            effects = self._apply_certcheck(event)
        elif event.object_kind in self.sources:
            certchecks = self.certchecks.get(event.namespace, {})
            effects = self.sources[event.object_kind].delete(event, certchecks)
        else:
            effects = self._delete_certcheck(event)
        self.seq = max(self.seq, seq)
        return effects

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
            selector_error=selector_error(
                event.selector,
                event.configmap_selector,
                event.namespace_selector,
                cluster_sources=bool(event.cluster_sources),
            ),
            resource_version=event.resource_version,
            keys=tuple(event.keys or ()),
            policy=policy_of(event.policy),
        )
        selectors = {index.kind.name: index.kind.selector_of(event) for index in self.sources.values()}
        status_raw = event.status.copy()  # not a view of the whole message: that is not kept
        if previous and _same_spec(previous.spec, spec) and previous.selectors == selectors:
            # Only the status changed (our own write coming back): nothing to re-evaluate, unless the
            # notifier recorded a change in its failures (the NotificationFailed condition follows them).
            failures_changed = _failures(previous.status_raw) != _failures(status_raw)
            previous.spec = spec
            previous.set_status(status_raw)
            previous.notification = event.notification
            if failures_changed:
                return Effects(evaluate={(event.namespace, event.name)})
            previous.resource_version = event.resource_version
            return Effects(statuses={(event.namespace, event.name)})
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
            spec, selectors, event.resource_version, status_raw, notification=event.notification
        )
        namespace_certchecks[event.name] = entry
        same_object = previous is not None and previous.spec.uid == event.uid
        # The threshold and the policy decide what the annotations of the Secrets it covers say.
        annotations_change = previous is not None and (
            previous.spec.threshold_days != spec.threshold_days or previous.spec.policy != spec.policy
        )
        effects = Effects(evaluate={(event.namespace, event.name)})
        for index in self.sources.values():
            old_covered = previous.covered_of(index.kind.name) if previous and same_object else set()
            covered = index.cover(entry, old_covered)
            if index.kind.annotated:
                touched = (covered ^ old_covered) | (covered if annotations_change else set())
                index.neighbours(event.namespace, touched, effects)
        return effects

    def _with_renewal_time(self, view: model.SecretView) -> model.SecretView:
        """A Secret's view with its Certificate's renewal time, when that Certificate writes it."""
        held = self.certificates.get(view.namespace, {}).get(view.managed_by or "")
        renewal_time = held[1] if held is not None and held[0] == view.name else None
        if renewal_time == view.renewal_time:
            return view
        return dataclasses.replace(view, renewal_time=renewal_time)

    def _certificate_changed(self, namespace: str, secret_name: str) -> Effects:
        """The Certificate writing this Secret changed: its view takes the new renewal time."""
        entry = self.secrets.get(namespace, secret_name)
        if entry is None:
            return Effects()
        view = self._with_renewal_time(entry.view)
        if view is entry.view:
            return Effects()
        entry.view = view
        _touch(self.certchecks.get(namespace, {}), entry.covered_by, (self.secrets.kind.name, secret_name))
        return Effects(evaluate={(namespace, name) for name in entry.covered_by})

    def _apply_certificate(self, event: CertificateObserved) -> Effects:
        held = self.certificates.setdefault(event.namespace, {})
        previous = held.get(event.name)
        if previous is not None and not _newer(event.resource_version, previous[2]):
            return Effects()
        held[event.name] = (event.secret_name, event.renewal_time, event.resource_version)
        effects = self._certificate_changed(event.namespace, event.secret_name)
        if previous is not None and previous[0] != event.secret_name:
            effects.merge(self._certificate_changed(event.namespace, previous[0]))
        return effects

    def _delete_certificate(self, event: ObjectDeleted) -> Effects:
        previous = self.certificates.get(event.namespace, {}).pop(event.name, None)
        return self._certificate_changed(event.namespace, previous[0]) if previous else Effects()

    def _delete_certcheck(self, event: ObjectDeleted) -> Effects:
        previous = self.certchecks.get(event.namespace, {}).pop(event.name, None)
        if previous is None:
            return Effects()
        self._coverage_changed(event.namespace)
        effects = Effects(removed=[(event.namespace, event.name, previous.spec.uid)])
        for index in self.sources.values():
            covered = previous.covered_of(index.kind.name)
            index.uncover(event.namespace, event.name, covered)
            if index.kind.annotated:
                index.neighbours(event.namespace, covered, effects)
        return effects

    def _coverage_changed(self, namespace: str) -> None:
        self._coverage_epochs[namespace] = self._coverage_epochs.get(namespace, 0) + 1
