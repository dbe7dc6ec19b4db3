"""What the public events say a certificate slot held at an evaluation: each rated certificate as a
(Slot, Seen) pair, worked out once per Rated. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from schemas.events import CertificateFacts, ObjectKind
from services.domain.certs import CertError, CertFacts
from services.domain.lifecycle import Seen, Slot
from services.domain.times import rfc3339
from services.evaluator.rating import Rated

# Per certificate facts object, by identity: found_slots converts every certificate of a CertCheck at
# each of its evaluations, and hashing the facts (a dozen fields) for an lru_cache cost more than the
# conversion. The entry holds the facts object, so its id is not reused while it is cached.
_CONVERTED: dict[int, tuple[CertFacts, CertificateFacts]] = {}
_CONVERTED_MAX = 200_000


def certificate_facts(facts: CertFacts) -> CertificateFacts:
    held = _CONVERTED.get(id(facts))
    if held is not None and held[0] is facts:
        return held[1]
    if len(_CONVERTED) >= _CONVERTED_MAX:
        _CONVERTED.clear()
    converted = _converted(facts)
    _CONVERTED[id(facts)] = (facts, converted)
    return converted


def _converted(facts: CertFacts) -> CertificateFacts:
    return CertificateFacts(
        fingerprint_sha256=facts.fingerprint,
        serial_number=facts.serial_number,
        subject=facts.subject_cn,
        issuer=facts.issuer_cn,
        dns_names=list(facts.dns_names),
        not_before=rfc3339(facts.not_before),
        not_after=rfc3339(facts.not_after),
    )


def found_slots(rated: Iterable[Rated]) -> dict[Slot, Seen]:
    """What an evaluation found in each slot."""
    return dict(slot_of(r) for r in rated)


def slot_of(r: Rated) -> tuple[Slot, Seen]:
    """The slot a rated certificate is in and what it holds there, worked out once."""
    pair = cast(tuple[Slot, Seen] | None, r.found)
    if pair is None:
        pair = _found(r)
        object.__setattr__(r, "found", pair)
    return pair


def _found(r: Rated) -> tuple[Slot, Seen]:
    kind = cast(ObjectKind, r.secret.kind)
    slot = Slot(kind, r.secret.name, r.secret.uid, r.entry.key, r.entry.index)
    parsed = r.entry.parsed
    if isinstance(parsed, CertError):
        return slot, Seen("Invalid", None, parsed.reason)
    return slot, Seen(r.state.value, certificate_facts(parsed))
