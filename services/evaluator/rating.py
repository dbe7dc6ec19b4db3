"""Rating: the state of each certificate a CertCheck reads, most urgent first, and when that next changes.

Pure: no I/O and no clock, every function takes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter

import msgspec

from schemas.messages import State
from services.domain.certs import CertFacts
from services.domain.hygiene import DEFAULT_POLICY, Policy, Problem, problems
from services.domain.model import (
    CertCheckSpec,
    CertEntry,
    SecretView,
    entry_label,
    renew_by,
    selected_entries,
)
from services.domain.states import URGENCY, classify, next_due
from services.domain.times import days, rfc3339, shift

FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
_JUST_AFTER = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Rated:
    """One certificate entry of an object and its state."""

    secret: SecretView
    entry: CertEntry
    state: State
    renew_by: datetime | None = None  # when cert-manager should have replaced it (None: not managed)
    problems: tuple[Problem, ...] = ()  # what the policy it was rated under finds wrong with it
    not_after: datetime = field(init=False)  # FAR_FUTURE for an unreadable entry
    identity: tuple[str, str, str, int] = field(init=False)  # kind, object name, key, index
    sort_key: tuple[int, datetime, str, str, str, int] = field(init=False)
    # What the public events make of it (lifecycle.found_slots), worked out once: a Rated outlives many
    # evaluations through the rating memo.
    found: object = field(default=None, init=False, compare=False, repr=False)
    # Its status entry while that holds (status.shown), and its summary-Event form (events.entry_change).
    shown: object = field(default=None, init=False, compare=False, repr=False)
    change: object = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parsed = self.entry.parsed
        not_after = parsed.not_after if isinstance(parsed, CertFacts) else FAR_FUTURE
        identity = (self.secret.kind, self.secret.name, self.entry.key, self.entry.index)
        object.__setattr__(self, "not_after", not_after)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "sort_key", (URGENCY[self.state], not_after, *identity))

    @property
    def label(self) -> str:
        return entry_label(self.secret.kind, self.secret.name, self.entry.key, self.entry.index)

    @property
    def facts(self) -> CertFacts | None:
        parsed = self.entry.parsed
        return parsed if isinstance(parsed, CertFacts) else None


BY_URGENCY = attrgetter("sort_key")


def unchanged_until(rated: Iterable[Rated], threshold_days: int, now: datetime) -> datetime:
    """The first moment after ``now`` at which any of these certificates' states changes: becomes
    valid at notBefore, expiring at notAfter - threshold, expired just after notAfter."""
    moments: list[datetime | None] = []
    for r in rated:
        facts = r.facts
        if facts is not None:
            moments += (
                facts.not_before,
                r.renew_by,
                shift(facts.not_after, -days(threshold_days)),
                shift(facts.not_after, _JUST_AFTER),
            )
    return min((m for m in moments if m is not None and m > now), default=FAR_FUTURE)


def rate(
    secret: SecretView,
    threshold_days: int,
    now: datetime,
    patterns: Sequence[str] = (),
    policy: Policy = DEFAULT_POLICY,
) -> list[Rated]:
    """The state of each certificate a CertCheck reads in a Secret, and what ``policy`` finds wrong with
    it. Worked out once per view, threshold and policy, and reused for as long as no certificate of the
    Secret reaches a boundary."""
    return _rated(secret, threshold_days, now, patterns, policy, _memo_key(threshold_days, patterns, policy))


def _memo_key(threshold_days: int, patterns: Sequence[str], policy: Policy) -> tuple[object, ...]:
    return ("rated", threshold_days, tuple(patterns), policy)


def _rated(
    secret: SecretView,
    threshold_days: int,
    now: datetime,
    patterns: Sequence[str],
    policy: Policy,
    memo_key: tuple[object, ...],
) -> list[Rated]:
    held = secret.memo.get(memo_key)
    if held is not None and held[0] <= now < held[1]:
        return held[2]  # type: ignore[return-value]
    rated = []
    for entry in selected_entries(secret, patterns):
        renew = renew_by(secret, entry)
        if isinstance(entry.parsed, CertFacts):
            state = classify(entry.parsed, threshold_days, now, renew)
            found = problems(entry.parsed, policy)
        else:
            state, found = State.INVALID, ()
        rated.append(Rated(secret, entry, state, renew, found))
    secret.memo[memo_key] = (now, unchanged_until(rated, threshold_days, now), rated)
    return rated


@dataclass(frozen=True, slots=True)
class Rating:
    """Every certificate a CertCheck reads: per object, all of them most urgent first, and by state
    (each state's list most urgent, so earliest notAfter, first)."""

    of_object: dict[tuple[str, str], list[Rated]]  # (kind, name) -> that object's entries
    ordered: list[Rated]
    by_state: dict[State, list[Rated]]
    # The managed certificates (a renewal moment), most urgent first, when the caller keeps them apart;
    # None: pick them out of the Valid ones.
    renewing: list[Rated] | None = None

    def count(self, state: State) -> int:
        return len(self.by_state.get(state, ()))

    def earliest(self) -> Rated | None:
        """The certificate that expires first, among those that can be read (the first of the most
        urgent state among those whose first expires first: each state's list is by notAfter)."""
        firsts = [held[0] for held in self.by_state.values() if held]
        firsts.sort(key=BY_URGENCY)
        with_dates = [r for r in firsts if r.not_after != FAR_FUTURE]
        return min(with_dates, key=attrgetter("not_after")) if with_dates else None


def rate_certificates(spec: CertCheckSpec, secrets: Sequence[SecretView], now: datetime) -> Rating:
    """Rate every certificate the CertCheck reads in ``secrets`` at its own threshold and keys."""
    threshold, keys, policy = spec.threshold_days, spec.keys, spec.policy
    memo_key = _memo_key(threshold, keys, policy)  # once, not once per Secret
    of_object = {(s.kind, s.name): _rated(s, threshold, now, keys, policy, memo_key) for s in secrets}
    ordered = sorted((r for of_one in of_object.values() for r in of_one), key=BY_URGENCY)
    return Rating(of_object, ordered, grouped_by_state(ordered))


def grouped_by_state(ordered: Iterable[Rated]) -> dict[State, list[Rated]]:
    """Certificates per state, each state's in the order given."""
    held: dict[State, list[Rated]] = {}
    for r in ordered:
        held.setdefault(r.state, []).append(r)
    return held


def rated_for(spec: CertCheckSpec, secret: SecretView, now: datetime) -> tuple[list[Rated], datetime]:
    """One object's entries rated at the CertCheck's threshold, keys and policy, and until when that
    rating holds (the memo's end: the first moment one of them changes state)."""
    memo_key = _memo_key(spec.threshold_days, spec.keys, spec.policy)
    rated = _rated(secret, spec.threshold_days, now, spec.keys, spec.policy, memo_key)
    return rated, secret.memo[memo_key][1]


def most_urgent(rated: Sequence[Rated]) -> Rated | None:
    return min(rated, key=BY_URGENCY) if rated else None


class SecretState(msgspec.Struct, frozen=True, gc=False):  # compared for every Secret at every evaluation
    """A Secret's state as a whole, as its annotations record it and its Events speak of it: the state
    of its most urgent certificate and that certificate's notAfter in RFC 3339 (None without one)."""

    state: str | None  # None: nothing recorded yet
    not_after: str | None


def state_of(urgent: Rated | None) -> SecretState:
    """The state of a Secret whose most urgent certificate is ``urgent``: Invalid when it has none."""
    if urgent is None:
        return SecretState(State.INVALID.value, None)
    facts = urgent.facts
    return SecretState(urgent.state.value, rfc3339(facts.not_after) if facts is not None else None)


def next_due_time(rating: Rating, threshold_days: int, now: datetime) -> datetime | None:
    """When the CertCheck must be evaluated again for a certificate to change state, or None."""
    return next_due(_due_candidates(rating.by_state, rating.renewing), threshold_days, now)


def _due_candidates(
    by_state: dict[State, list[Rated]], renewing: list[Rated] | None = None
) -> list[tuple[CertFacts, datetime | None]]:
    """The certificates among which the next boundary lies (each state's list is sorted by notAfter).
    A Valid one's next boundary is notAfter - threshold, an ExpiringSoon one's notAfter + 1 s (at most
    a second past it, an Expired one's too): the earliest notAfter of each state has the earliest. A
    NotYetValid certificate's boundaries need not come in notAfter order: all are candidates; nor need a
    managed Valid one's renewal moment (its notBefore counts too): those are all candidates as well."""
    candidates = [*by_state.get(State.NOT_YET_VALID, [])]
    if renewing is None:
        candidates += [r for r in by_state.get(State.VALID, []) if r.renew_by is not None]
    else:
        candidates += [r for r in renewing if r.state == State.VALID]
    for state, at in (
        (State.VALID, 0),
        (State.RENEWAL_OVERDUE, 0),
        (State.EXPIRING_SOON, 0),
        (State.EXPIRED, -1),
    ):
        if by_state.get(state):
            candidates.append(by_state[state][at])
    return [(facts, r.renew_by) for r in candidates if (facts := r.facts) is not None]
