"""What a CertCheck's policy finds wrong with the certificates it reads, besides their dates: the
``Weak`` and ``ChainInvalid`` conditions, the status entries' problems, the Secrets' problems annotation.
Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.domain.hygiene import CHAIN, WEAK
from services.evaluator.rating import Rated

MAX_ANNOTATION = 1000


@dataclass(frozen=True, slots=True)
class Findings:
    """The certificates with a problem, per kind of problem, most urgent first (each Rated carries its
    own problems, found as it was rated under the CertCheck's policy)."""

    weak: list[Rated]
    broken_chains: list[Rated]


NO_FINDINGS = Findings([], [])


def findings(rated: Sequence[Rated]) -> Findings:
    weak = [r for r in rated if r.problems and any(p.kind == WEAK for p in r.problems)]
    broken = [r for r in rated if r.problems and any(p.kind == CHAIN for p in r.problems)]
    return Findings(weak, broken)


@dataclass(frozen=True, slots=True)
class SecretProblems:
    """What a Secret's ``certcheck.dev/problems`` annotation says (None: nothing), and of which kinds."""

    text: str | None = None
    kinds: frozenset[str] = frozenset()


NO_PROBLEMS = SecretProblems()


def secret_problems(rated: Sequence[Rated]) -> SecretProblems:
    """What ``rated`` (a Secret's entries, rated under the strictest policy covering it) have wrong."""
    found = [(r.entry.key, r.entry.index, p) for r in rated for p in r.problems]
    if not found:
        return NO_PROBLEMS
    text = "; ".join(f"{key}[{index}]: {p.message}" for key, index, p in found)
    if len(text) > MAX_ANNOTATION:
        text = text[: MAX_ANNOTATION - 3] + "..."
    return SecretProblems(text, frozenset(p.kind for _, _, p in found))
