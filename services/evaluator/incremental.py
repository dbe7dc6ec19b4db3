"""A CertCheck's evaluation brought up to date from what changed since the one before it. Pure.

A CertCheck over thousands of Secrets, one of which changed, is evaluated as ``core.evaluate`` would
evaluate it, with the work of that one Secret: ``Kept`` holds the last evaluation's parts (each object's
rated certificates, sorted once and kept sorted; each Secret's outcome; the patches still due; what each
slot holds), and ``evaluate_changes`` re-rates only the objects the view says changed and those whose
rating ran out (a certificate crossing a boundary), then assembles the evaluation as ``core`` does.

Two differences, both on purpose: an unchanged Secret's Events are derived again only when the told
patches of this evaluation or of the one before name it (otherwise they would repeat, word for word,
Events the evaluation before published; a ``Kept`` is put back only after its evaluation's result
stood); and the slots the public events compare are only those of the changed objects.
``tests/unit/test_incremental.py`` holds both to ``core.evaluate`` under random changes.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from schemas.messages import AnnotationPatch, CertCheckStatus, State
from services.domain.hygiene import CHAIN, WEAK
from services.domain.lifecycle import Seen, Slot
from services.domain.model import KUBERNETES_KIND_SECRET, CertCheckSpec, Coverage, SecretView
from services.domain.view import CertCheckKey, View
from services.evaluator.annotations import SecretOutcome, outcome_valid_until, secret_outcomes
from services.evaluator.core import Basis, Evaluation, Parts, assemble
from services.evaluator.hygiene import Findings
from services.evaluator.rating import BY_URGENCY, FAR_FUTURE, Rated, Rating, rated_for
from services.evaluator.slots import slot_of

SourceKey = tuple[str, str]  # (source kind as the stream names it, object name): how the view says it
ObjectKey = tuple[str, str]  # (Kubernetes kind, name): how a rating says it
Identity = tuple[str, str, str, int]

# Changes of more than this share of the certificates kept are folded in by sorting everything again.
_RESORT_SHARE = 0.125


class RatingIndex:
    """A Rating kept sorted object by object: the entries most urgent first, per state, the weak, the
    broken chains and the managed ones, each as ``core`` would sort them from scratch."""

    def __init__(self) -> None:
        self.of_object: dict[ObjectKey, list[Rated]] = {}
        self.ordered: list[Rated] = []
        self.by_state: dict[State, list[Rated]] = {}
        self.weak: list[Rated] = []
        self.broken: list[Rated] = []
        self.renewing: list[Rated] = []
        self.by_identity: dict[Identity, Rated] = {}

    def update(self, changes: Mapping[ObjectKey, list[Rated] | None]) -> None:
        """Each object's entries replaced (None: the object is gone)."""
        moved = sum(len(self.of_object.get(k, ())) + len(v or ()) for k, v in changes.items())
        if moved > _RESORT_SHARE * len(self.ordered):
            for key, rated in changes.items():
                self._set(key, rated)
            self._resort()
            return
        for key, rated in changes.items():
            for r in self._set(key, rated):
                for held in self._lists(r):
                    index = bisect_left(held, r.sort_key, key=BY_URGENCY)
                    assert held[index] is r
                    del held[index]
                if not self.by_state[r.state]:
                    del self.by_state[r.state]
            for r in rated or ():
                for held in self._lists(r):
                    insort(held, r, key=BY_URGENCY)

    def _set(self, key: ObjectKey, rated: list[Rated] | None) -> list[Rated]:
        old = self.of_object.pop(key, [])
        for r in old:
            del self.by_identity[r.identity]
        if rated is not None:
            self.of_object[key] = rated
            self.by_identity.update((r.identity, r) for r in rated)
        return old

    def _lists(self, r: Rated) -> Iterable[list[Rated]]:
        yield self.ordered
        yield self.by_state.setdefault(r.state, [])
        if r.problems:
            kinds = {p.kind for p in r.problems}
            if WEAK in kinds:
                yield self.weak
            if CHAIN in kinds:
                yield self.broken
        if r.renew_by is not None:
            yield self.renewing

    def _resort(self) -> None:
        self.ordered = sorted((r for rated in self.of_object.values() for r in rated), key=BY_URGENCY)
        self.by_state, self.weak, self.broken, self.renewing = {}, [], [], []
        for r in self.ordered:
            for held in self._lists(r):
                if held is not self.ordered:
                    held.append(r)

    def rating(self) -> Rating:
        return Rating(self.of_object, self.ordered, self.by_state, self.renewing)

    def findings(self) -> Findings:
        return Findings(self.weak, self.broken)


@dataclass(eq=False)
class Kept:
    """What one CertCheck's last evaluation worked out, to start the next one from. Valid for the spec's
    threshold, keys and policy and the namespace's coverage epoch it was built at, and for moments from
    the one it was built at on (``fits``)."""

    spec: CertCheckSpec
    epoch: int
    now: datetime
    sources: dict[SourceKey, SecretView] = field(default_factory=dict)
    coverage: dict[str, Coverage] = field(default_factory=dict)
    index: RatingIndex = field(default_factory=RatingIndex)
    outcomes: dict[str, SecretOutcome] = field(default_factory=dict)
    patches: dict[str, AnnotationPatch] = field(default_factory=dict)
    # When each source's rating or outcome runs out (a certificate reaches a boundary), and a heap of
    # those moments (with entries for moments since replaced, skipped when they come up).
    valid_until: dict[SourceKey, datetime] = field(default_factory=dict)
    due: list[tuple[datetime, SourceKey]] = field(default_factory=list)
    told_names: frozenset[str] = frozenset()  # the Secrets the told patches named last time
    found: dict[Slot, Seen] = field(default_factory=dict)
    handed: dict[Slot, Seen] | None = None  # the copy of ``found`` the last evaluation handed out
    uids: dict[str, int] = field(default_factory=dict)  # the uids of the objects selected

    def fits(self, spec: CertCheckSpec, epoch: int, now: datetime) -> bool:
        return (
            epoch == self.epoch
            and now >= self.now
            and spec.uid == self.spec.uid
            and spec.threshold_days == self.spec.threshold_days
            and spec.keys == self.spec.keys
            and spec.policy == self.spec.policy
        )

    def run_out(self, now: datetime) -> set[SourceKey]:
        """The sources whose rating or outcome no longer holds at ``now``."""
        found: set[SourceKey] = set()
        while self.due and self.due[0][0] <= now:
            moment, source = heapq.heappop(self.due)
            if self.valid_until.get(source) == moment:
                found.add(source)
        return found

    def _until(self, source: SourceKey, moment: datetime) -> None:
        if self.valid_until.get(source) == moment:
            return
        if moment == FAR_FUTURE:
            self.valid_until.pop(source, None)
            return
        self.valid_until[source] = moment
        heapq.heappush(self.due, (moment, source))
        if len(self.due) > 2 * len(self.valid_until) + 64:  # compact the replaced entries away
            self.due = [(m, s) for s, m in self.valid_until.items()]
            heapq.heapify(self.due)


def evaluate_in_view(view: View, key: CertCheckKey, basis: Basis) -> tuple[Evaluation, Callable[[], None]]:
    """Evaluate a CertCheck of ``view`` from what its last evaluation kept, if that still fits, and
    what the view says changed since; and how to keep what this one built for the next (to be called
    once its result stood: until then, and for good if it never does, the next starts from scratch)."""
    entry = view.certcheck(key)
    assert entry is not None
    touched, kept, take = entry.take()
    epoch = view.coverage_epoch(key[0])
    if not (isinstance(kept, Kept) and kept.fits(entry.spec, epoch, basis.now)):
        kept, touched = Kept(entry.spec, epoch, basis.now), set(view.covered_sources(key))
    changes, coverage = view.inputs_of(key, touched)
    evaluation = evaluate_changes(kept, entry.spec, changes, coverage, entry.observed, basis)
    return evaluation, partial(entry.put_back, kept, take)


def evaluate_changes(
    kept: Kept,
    spec: CertCheckSpec,
    changes: Mapping[SourceKey, SecretView | None],
    coverage: Mapping[str, Coverage],
    observed: CertCheckStatus | None,
    basis: Basis,
) -> Evaluation:
    """The evaluation ``core.evaluate`` makes of the CertCheck, from ``kept`` brought up to date (in
    place) with ``changes``: each changed source's view, None when it is no longer selected, and each
    changed Secret's coverage. A ``Kept`` that does not ``fit`` must be replaced by a new one first.
    On any failure the ``Kept`` is not to be used again."""
    now = basis.now
    changes = dict(changes)
    for source in kept.run_out(now) - changes.keys():
        changes[source] = kept.sources[source]
    kept.spec, kept.now = spec, now
    changed_slots: set[Slot] = set()
    rated_changes: dict[ObjectKey, list[Rated] | None] = {}
    changed_secrets: dict[str, tuple[SourceKey, SecretView]] = {}
    for source, view in changes.items():
        # A Secret whose coverage the view did not give (it ran out, it did not change) keeps its own.
        held = view is not None and (coverage.get(view.name) or kept.coverage.get(view.name))
        old = kept.sources.pop(source, None)
        rated, until = rated_for(spec, view, now) if view is not None else ([], FAR_FUTURE)
        if old is not None and view is not None and rated is kept.index.of_object.get((old.kind, old.name)):
            # The same rating (a newer version with the same content: certcheck's annotations coming
            # back): only its outcome is worked out again.
            kept.sources[source] = view
        else:
            if old is not None:
                rated_changes[(old.kind, old.name)] = None
                _forget_object(kept, old, changed_slots)
            if view is None:
                kept.valid_until.pop(source, None)
                continue
            kept.sources[source] = view
            rated_changes[(view.kind, view.name)] = rated
            kept.uids[view.uid] = kept.uids.get(view.uid, 0) + 1
            for r in rated:
                slot, seen = slot_of(r)
                kept.found[slot] = seen
                changed_slots.add(slot)
        if view.kind == KUBERNETES_KIND_SECRET:
            kept.coverage[view.name] = held or Coverage((spec.name,), spec.threshold_days, spec.policy)
            changed_secrets[view.name] = (source, view)
        kept._until(source, until)
    kept.index.update(rated_changes)
    rating = kept.index.rating()
    views = [view for _, view in changed_secrets.values()]
    for outcome in secret_outcomes(spec, views, kept.coverage, rating, now):
        name = outcome.secret.name
        kept.outcomes[name] = outcome
        if outcome.patch is not None:
            kept.patches[name] = outcome.patch
        else:
            kept.patches.pop(name, None)
        source = changed_secrets[name][0]
        moment = outcome_valid_until(outcome.secret, outcome.coverage)
        kept._until(source, min(moment, kept.valid_until.get(source, FAR_FUTURE)))
    told_names = frozenset(p.name for p in basis.told_patches)
    to_tell = changed_secrets.keys() | told_names | kept.told_names
    kept.told_names = told_names
    found = kept.found.copy()
    since = (kept.handed, changed_slots) if kept.handed is not None else None
    kept.handed = found
    parts = Parts(
        rating=rating,
        findings=kept.index.findings(),
        objects=len(kept.sources),
        outcomes=[kept.outcomes[name] for name in sorted(to_tell) if name in kept.outcomes],
        patches=[kept.patches[name] for name in sorted(kept.patches)],
        # A live view of what is kept: read before it is put back (Evaluator.evaluate tells the events first).
        selected_uids=kept.uids.keys(),
        by_identity=kept.index.by_identity,
        found=found,
        found_since=since,
    )
    return assemble(spec, parts, observed, basis)


def _forget_object(kept: Kept, old: SecretView, changed_slots: set[Slot]) -> None:
    for r in kept.index.of_object.get((old.kind, old.name), ()):
        slot = slot_of(r)[0]
        kept.found.pop(slot, None)
        changed_slots.add(slot)
    count = kept.uids.get(old.uid, 0) - 1
    if count > 0:
        kept.uids[old.uid] = count
    else:
        kept.uids.pop(old.uid, None)
    if old.kind == KUBERNETES_KIND_SECRET:
        kept.outcomes.pop(old.name, None)
        kept.patches.pop(old.name, None)
        kept.coverage.pop(old.name, None)
