"""Which lifecycle facts an evaluation establishes, per certificate slot: pure, no I/O.

A slot is one position a certificate can hold (an object, by uid, a data key, a chain index) as one
CertCheck sees it. Given what was known of each slot before and what an evaluation found now, the
facts are those of schemas/events.py: a slot first seen is ``discovered``; one holding another
certificate is ``rotated``; one whose state moved is ``statechanged`` (a rotation that moved the state
is both); one gone is ``removed``, with why. The same before and after give the same facts, whose ids
(schemas.events.event_id) are then the same: deriving them again publishes nothing new.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from schemas.events import (
    DISCOVERED,
    REMOVED,
    ROTATED,
    STATE_CHANGED,
    CertificateEvent,
    CertificateFacts,
    CertState,
    ObjectKind,
    RemovedBecause,
)


class Slot(NamedTuple):  # a tuple: hashed and compared in C, thousands of times per evaluation
    object_kind: ObjectKind
    object_name: str
    object_uid: str
    key: str
    chain_index: int  # position in the key's chain or bundle


class Seen(NamedTuple):  # built for every certificate of a CertCheck at each evaluation: a tuple is cheap
    """What a slot held at one evaluation."""

    state: CertState
    certificate: CertificateFacts | None = None  # None: nothing readable there (Invalid)
    reason: str | None = None


@dataclass(frozen=True)
class Watcher:
    """The CertCheck that sees the slots, where."""

    cluster: str
    namespace: str
    certcheck: str
    threshold_days: int


Fact = tuple[str, CertificateEvent]  # the subject token of the type, and the event's data


def _event(watcher: Watcher, slot: Slot, seen: Seen, **what: object) -> CertificateEvent:
    return CertificateEvent(
        cluster=watcher.cluster,
        namespace=watcher.namespace,
        object_kind=slot.object_kind,
        object_name=slot.object_name,
        object_uid=slot.object_uid,
        key=slot.key,
        index=slot.chain_index,
        certcheck=watcher.certcheck,
        threshold_days=watcher.threshold_days,
        state=seen.state,
        certificate=seen.certificate,
        reason=seen.reason,
        **what,  # type: ignore[arg-type]
    )


def _fingerprint(seen: Seen) -> str | None:
    return seen.certificate.fingerprint_sha256 if seen.certificate else None


def slot_facts(
    watcher: Watcher, slot: Slot, before: Seen | None, after: Seen | None, gone: RemovedBecause | None = None
) -> list[Fact]:
    """The facts of one slot between two evaluations (``gone``: why, when it is no longer there)."""
    if before is None and after is None:
        return []
    if before is None:
        assert after is not None
        return [(DISCOVERED, _event(watcher, slot, after))]
    if after is None:
        return [(REMOVED, _event(watcher, slot, before, removed_because=gone or "NoLongerSelected"))]
    facts: list[Fact] = []
    old, new = _fingerprint(before), _fingerprint(after)
    if old is not None and new is not None and old != new:
        facts.append((ROTATED, _event(watcher, slot, after, previous_certificate=before.certificate)))
    if before.state != after.state:
        facts.append((STATE_CHANGED, _event(watcher, slot, after, previous_state=before.state)))
    return facts


def lifecycle_facts(
    watcher: Watcher,
    before: Mapping[Slot, Seen],
    after: Mapping[Slot, Seen],
    gone: Callable[[Slot], RemovedBecause],
    changed: Iterable[Slot] | None = None,
) -> list[Fact]:
    """Every fact between two evaluations of one CertCheck: the slots found, in ``after``'s order, then
    those gone. ``after`` empty with ``gone`` saying CertCheckDeleted is the CertCheck's removal.
    ``changed``: the only slots that can differ between the two, when the caller knows them (an
    evaluation of one changed Secret among thousands); else every slot is compared."""
    if changed is not None:
        facts: list[Fact] = []
        for slot in changed:
            held, holds = before.get(slot), after.get(slot)
            if held != holds:
                facts += slot_facts(watcher, slot, held, holds, None if holds is not None else gone(slot))
        return facts
    facts = []
    for slot, holds in after.items():
        held = before.get(slot)
        if held != holds:
            facts += slot_facts(watcher, slot, held, holds)
    for slot, held in before.items():
        if slot not in after:
            facts += slot_facts(watcher, slot, held, None, gone(slot))
    return facts
