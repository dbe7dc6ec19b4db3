"""What a CertCheck's policy finds wrong with the certificates it reads, besides their dates: the
``Weak`` and ``ChainInvalid`` conditions, the status entries' problems, the Secrets' problems annotation.
Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.domain.hygiene import CHAIN, WEAK, Problem
from services.evaluator.rating import Rated

MAX_ANNOTATION = 1000


@dataclass(frozen=True, slots=True)
class Findings:
    """Each certificate's problems (only those with any), and the certificates per kind of problem,
    most urgent first."""

    of: dict[tuple[str, str, str, int], tuple[Problem, ...]]
    weak: list[Rated]
    broken_chains: list[Rated]


def findings(rated: Sequence[Rated]) -> Findings:
    """The problems of ``rated`` (found as they were rated, under the CertCheck's policy)."""
    of: dict[tuple[str, str, str, int], tuple[Problem, ...]] = {}
    weak: list[Rated] = []
    broken: list[Rated] = []
    for r in rated:
        found = r.problems
        if not found:
            continue
        of[r.identity] = found
        if any(p.kind == WEAK for p in found):
            weak.append(r)
        if any(p.kind == CHAIN for p in found):
            broken.append(r)
    return Findings(of, weak, broken)


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
