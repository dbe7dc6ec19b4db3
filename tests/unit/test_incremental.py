"""An evaluation brought up to date from what changed says what an evaluation from scratch says.

A real view is fed random changes (Secrets put, replaced, relabelled, annotated as the recorder would,
deleted; ConfigMaps; cert-manager Certificates; a second CertCheck that changes the Secrets' coverage;
the status written back; time passing across state boundaries), and after each round the CertCheck is
evaluated both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.messages import (
    AnnotationPatch,
    CertCheckObserved,
    CertCheckStatus,
    CertificateObserved,
    CertSource,
    ConfigMapObserved,
    EventIntent,
    LabelSelector,
    ObjectDeleted,
    SecretObserved,
)
from services.domain.certs import CertError, CertFacts, to_wire
from services.domain.lifecycle import Seen, Slot, Watcher, lifecycle_facts
from services.domain.view import View
from services.evaluator import core
from services.evaluator.incremental import evaluate_in_view
from services.evaluator.slots import found_slots

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEY = ("ns", "check")


def _facts(days: float, serial: str, **extra: object) -> CertFacts:
    not_after = NOW + timedelta(days=days)
    fields: dict[str, object] = {
        "not_before": not_after - timedelta(days=90),
        "not_after": not_after,
        "subject_cn": f"{serial}.test",
        "issuer_cn": "ca",
        "serial_number": serial,
        "fingerprint": f"fp-{serial}",
        "key_algorithm": "RSA",
        "key_size": 2048,
        **extra,
    }
    return CertFacts(**fields)  # type: ignore[arg-type]


POOL: list[CertFacts | CertError] = [
    _facts(-5, "expired"),
    _facts(3, "soon"),
    _facts(29.9, "at-threshold"),  # expiring within hours
    _facts(30.5, "just-valid"),  # crosses the 30-day threshold within a day
    _facts(31, "valid"),
    _facts(200, "far"),
    _facts(400, "later", not_before=NOW + timedelta(days=2)),  # not yet valid, valid in two days
    _facts(60, "weak", key_size=1024),
    _facts(45, "broken", chain_problem="issuer not found in the chain"),
    _facts(0.5, "hours"),  # expires within the day
    CertError("no PEM block found"),
]

certs = st.lists(st.integers(0, len(POOL) - 1), min_size=1, max_size=3)
names = st.integers(0, 3)
operations = st.one_of(
    st.tuples(st.just("put"), names, certs, st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.just("write"), names),
    st.tuples(st.just("delete"), names),
    st.tuples(st.just("configmap"), st.integers(0, 2), certs),
    st.tuples(st.just("configmap-delete"), st.integers(0, 2)),
    st.tuples(st.just("certificate"), names, st.sampled_from([-80, -50, -10, 5, 20, 100])),
    st.tuples(st.just("other"), st.sampled_from([0, 10, 45, 90])),
    st.tuples(
        st.just("status"),
    ),
    st.tuples(st.just("tick"), st.sampled_from([1, 6, 24, 24 * 3])),
)
# After each change: an evaluation whose result stood, one whose result did not (nothing is kept of
# it), or none yet.
then = st.sampled_from(["evaluate", "evaluate", "lose", "none"])


def _encoded(events: list[EventIntent]) -> set[bytes]:
    return {msgspec.json.encode(e) for e in events}


@dataclass
class World:
    """A view fed as the evaluator's is, and what the last evaluation told."""

    view: View = field(default_factory=View)
    seq: int = 0
    version: int = 0
    now: datetime = NOW
    told_status: CertCheckStatus | None = None
    told_patches: list[AnnotationPatch] = field(default_factory=list)
    secrets: dict[int, SecretObserved] = field(default_factory=dict)
    told_found: dict[Slot, Seen] | None = None
    published: set[bytes] = field(default_factory=set)  # every Event the incremental evaluations told

    def apply(self, message: object) -> None:
        self.seq += 1
        self.view.apply(self.seq, message)  # type: ignore[arg-type]

    def rv(self) -> str:
        self.version += 1
        return str(self.version)

    def certcheck(self, name: str, threshold: int, labels: dict[str, str]) -> None:
        self.apply(
            CertCheckObserved(
                namespace="ns",
                name=name,
                uid=f"uid-{name}",
                resource_version=self.rv(),
                generation=1,
                threshold_days=threshold,
                selector=LabelSelector(match_labels=labels),
                configmap_selector=LabelSelector(match_labels=labels),
            )
        )

    def put(self, i: int, chosen: list[int], selected: bool, team: bool, keep_annotations: bool) -> None:
        previous = self.secrets.get(i)
        labels = {"app": "x" if selected else "y"} | ({"team": "t"} if team else {})
        wire = [to_wire(POOL[c]) for c in chosen]
        secret = SecretObserved(
            namespace="ns",
            name=f"s{i}",
            uid=f"uid-s{i}",
            resource_version=self.rv(),
            type="kubernetes.io/tls",
            labels=labels,
            annotations=previous.annotations if previous and keep_annotations else {},
            sources=[CertSource("tls.crt", certs=wire)],
            certificate_name=f"c{i}",
        )
        self.secrets[i] = secret
        self.apply(secret)

    def write(self, i: int) -> None:
        """The recorder applied what the last evaluation told of this Secret."""
        secret = self.secrets.get(i)
        patch = next((p for p in self.told_patches if p.name == f"s{i}"), None)
        if secret is None or patch is None:
            return
        merged = {**secret.annotations, **patch.annotations}
        annotations = {k: v for k, v in merged.items() if v is not None}
        self.secrets[i] = msgspec.structs.replace(secret, annotations=annotations, resource_version=self.rv())
        self.apply(self.secrets[i])

    def step(self, op: tuple[object, ...]) -> None:
        match op:
            case ("put", int(i), list(chosen), bool(selected), bool(team), bool(keep)):
                self.put(i, chosen, selected, team, keep)
            case ("write", int(i)):
                self.write(i)
            case ("delete", int(i)):
                if self.secrets.pop(i, None) is not None:
                    self.apply(ObjectDeleted("secret", "ns", f"s{i}", f"uid-s{i}", self.rv()))
            case ("configmap", int(i), list(chosen)):
                wire = [to_wire(POOL[c]) for c in chosen]
                self.apply(
                    ConfigMapObserved(
                        namespace="ns",
                        name=f"s{i}",  # the name of a Secret too: a different object all the same
                        uid=f"uid-cm{i}",
                        resource_version=self.rv(),
                        labels={"app": "x"},
                        sources=[CertSource("ca.crt", certs=wire)],
                    )
                )
            case ("configmap-delete", int(i)):
                self.apply(ObjectDeleted("configmap", "ns", f"s{i}", f"uid-cm{i}", self.rv()))
            case ("certificate", int(i), int(days)):
                renewal = NOW + timedelta(days=days)
                self.apply(CertificateObserved("ns", f"c{i}", f"uid-c{i}", self.rv(), f"s{i}", renewal))
            case ("other", int(threshold)):
                if threshold:
                    self.certcheck("other", threshold, {"team": "t"})
                else:
                    self.apply(ObjectDeleted("certcheck", "ns", "other", "uid-other", self.rv()))
            case ("status",):
                entry = self.view.certcheck(KEY)
                if entry is not None and self.told_status is not None:
                    entry.set_status(msgspec.Raw(msgspec.json.encode(self.told_status)))
            case ("tick", int(hours)):
                self.now += timedelta(hours=hours)

    def evaluate(self, keep: bool = True) -> None:
        entry = self.view.certcheck(KEY)
        assert entry is not None
        secrets, coverage = self.view.inputs(KEY)
        told, patches = self.told_status, self.told_patches
        scratch = core.evaluate(
            entry.spec, secrets, coverage, entry.observed, self.now, 5, told=told, told_patches=patches
        )
        basis = core.Basis(self.now, 5, told=told, told_patches=patches)
        changed, keep_it = evaluate_in_view(self.view, KEY, basis)
        assert changed.status == scratch.status
        assert changed.status_changed == scratch.status_changed
        assert changed.annotation_patches == scratch.annotation_patches
        assert changed.next_due == scratch.next_due
        assert changed.selected_uids == scratch.selected_uids
        assert [(r.identity, r.state) for r in changed.certificates] == [
            (r.identity, r.state) for r in scratch.certificates
        ]
        found = found_slots(scratch.certificates)
        assert changed.found == found
        told_events, due_events = _encoded(changed.events), _encoded(scratch.events)
        assert told_events <= due_events, "an Event that an evaluation from scratch does not tell"
        assert due_events - told_events <= self.published, "an Event due was never told"
        if not keep:
            return
        self.published |= told_events
        if changed.found_since is not None and self.told_found is not None:
            before, slots = changed.found_since
            assert before is self.told_found
            watcher = Watcher("c", *KEY, 30)
            every = lifecycle_facts(watcher, before, found, lambda slot: "ObjectDeleted")
            only = lifecycle_facts(watcher, before, found, lambda slot: "ObjectDeleted", slots)
            assert sorted(map(repr, only)) == sorted(map(repr, every))
        self.told_found = changed.found
        self.told_status, self.told_patches = scratch.status, scratch.annotation_patches
        keep_it()


def _world() -> World:
    world = World()
    world.certcheck("check", 30, {"app": "x"})
    return world


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(operations, then), min_size=1, max_size=30))
def test_an_evaluation_from_what_changed_tells_what_one_from_scratch_tells(
    steps: list[tuple[tuple[object, ...], str]],
) -> None:
    world = _world()
    for op, after in steps:
        world.step(op)
        if after != "none":
            world.evaluate(keep=after == "evaluate")
    world.evaluate()


def _many(count: int) -> Iterator[tuple[object, ...]]:
    for i in range(count):
        yield ("put", i % 8, [i % len(POOL)], True, i % 3 == 0, False)


def test_a_new_spec_or_coverage_starts_from_scratch_and_still_agrees() -> None:
    world = _world()
    for op in _many(8):
        world.step(op)
    world.evaluate()
    world.certcheck("check", 45, {"app": "x"})  # a new spec: a new entry, nothing kept
    world.evaluate()
    world.step(("other", 90))  # the coverage of the team=t Secrets changes
    world.evaluate()
    world.step(("tick", 24 * 40))
    world.evaluate()


def test_a_renewal_time_that_changes_without_the_secret_is_seen() -> None:
    world = _world()
    world.step(("put", 0, [4], True, False, False))  # valid for 31 days, managed by Certificate c0
    world.evaluate()
    world.step(("certificate", 0, -50))  # its renewal was planned 50 days ago: overdue
    world.evaluate()
    assert world.told_status is not None and world.told_status.renewal_overdue_count == 1


def test_certchecks_annotations_coming_back_are_folded_in_without_rating_anything_again() -> None:
    world = _world()
    for i in range(8):
        world.step(("put", i, [i % len(POOL)], True, False, False))
    world.evaluate()
    assert world.told_patches, "every Secret is still to annotate"
    entry = world.view.certcheck(KEY)
    assert entry is not None
    rated_before = {key: id(rated) for key, rated in entry.kept.index.of_object.items()}  # type: ignore[union-attr]
    for i in range(8):
        world.step(("write", i))
    world.evaluate()
    assert world.told_patches == [], "the patches written are no longer due"
    kept = entry.kept
    assert {key: id(rated) for key, rated in kept.index.of_object.items()} == rated_before  # type: ignore[union-attr]
    assert all(
        kept.sources[("secret", f"s{i}")].resource_version == world.secrets[i].resource_version
        for i in range(8)
    )  # type: ignore[union-attr]


def test_a_secret_that_comes_to_be_managed_by_cert_manager_is_evaluated_again() -> None:
    world = _world()
    old = _facts(35, "old", not_before=NOW - timedelta(days=300))  # cert-manager would have renewed it
    unmanaged = SecretObserved(
        namespace="ns",
        name="s0",
        uid="uid-s0",
        resource_version=world.rv(),
        type="kubernetes.io/tls",
        labels={"app": "x"},
        sources=[CertSource("tls.crt", certs=[to_wire(old)])],
    )
    world.secrets[0] = unmanaged
    world.apply(unmanaged)
    world.evaluate()
    assert world.told_status is not None and world.told_status.renewal_overdue_count == 0
    # Only its certificate-name annotation changes (no Certificate is seen: no renewal time either).
    managed = msgspec.structs.replace(unmanaged, certificate_name="c0", resource_version=world.rv())
    world.secrets[0] = managed
    world.seq += 1
    effects = world.view.apply(world.seq, managed)
    assert effects.evaluate == {KEY}
    world.evaluate()
    assert world.told_status is not None and world.told_status.renewal_overdue_count == 1
