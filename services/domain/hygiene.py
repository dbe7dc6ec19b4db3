"""Problems before expiry: a certificate whose key or signature a CertCheck's policy calls weak, or whose
chain is broken. Pure: no I/O.

The facts (key algorithm and size, signature algorithm, what is wrong with the chain) are read once, in
the watcher; the policy is each CertCheck's own (``spec.policy``, safe defaults). A Secret covered by
several CertChecks is judged by the strictest of their policies, so that they never fight over its
annotations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.messages import HygienePolicy
from services.domain.certs import CertFacts

DEFAULT_WEAK_HASHES = frozenset({"md2", "md4", "md5", "sha1"})
WEAK = "Weak"
CHAIN = "Chain"


def normalise_hash(name: str) -> str:
    """``SHA-1``, ``sha1`` and ``SHA1`` name the same hash."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True, slots=True)
class Policy:
    minimum_rsa_key_size: int = 2048  # RSA and DSA
    minimum_ec_key_size: int = 256
    weak_signature_hashes: frozenset[str] = field(default=DEFAULT_WEAK_HASHES)
    verify_chains: bool = True
    # Part of a memo key looked up for every certificate at every evaluation: hashed once.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.minimum_rsa_key_size, self.minimum_ec_key_size, self.weak_signature_hashes)
        object.__setattr__(self, "_hash", hash((*fields, self.verify_chains)))

    def __hash__(self) -> int:
        return self._hash


DEFAULT_POLICY = Policy()
MAX_HASHES = 16


def policy_of(spec: HygienePolicy | None) -> Policy:
    """A CertCheck's policy, its unset fields the defaults (bounded: the spec is anyone's to write)."""
    if spec is None:
        return DEFAULT_POLICY
    hashes = spec.weak_signature_hashes
    return Policy(
        minimum_rsa_key_size=_bits(spec.minimum_rsa_key_size, DEFAULT_POLICY.minimum_rsa_key_size),
        minimum_ec_key_size=_bits(spec.minimum_ec_key_size, DEFAULT_POLICY.minimum_ec_key_size),
        weak_signature_hashes=(
            frozenset(normalise_hash(h)[:32] for h in hashes[:MAX_HASHES])
            if hashes is not None
            else DEFAULT_WEAK_HASHES
        ),
        verify_chains=spec.verify_chains if spec.verify_chains is not None else True,
    )


def _bits(value: int | None, default: int) -> int:
    return default if value is None else min(max(value, 0), 1 << 16)


def strictest(policies: Iterable[Policy]) -> Policy:
    """The policy that finds every problem any of ``policies`` finds (the default for none)."""
    chosen = list(policies)
    if not chosen:
        return DEFAULT_POLICY
    if len(chosen) == 1:
        return chosen[0]
    return Policy(
        minimum_rsa_key_size=max(p.minimum_rsa_key_size for p in chosen),
        minimum_ec_key_size=max(p.minimum_ec_key_size for p in chosen),
        weak_signature_hashes=frozenset().union(*(p.weak_signature_hashes for p in chosen)),
        verify_chains=any(p.verify_chains for p in chosen),
    )


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # WEAK or CHAIN
    reason: str  # a metric label value: KeyTooSmall, WeakSignature, BrokenChain
    message: str


def _signature_hash(facts: CertFacts) -> str | None:
    if facts.signature_hash:
        return normalise_hash(facts.signature_hash)
    algorithm = (facts.signature_algorithm or "").lower()
    for name in sorted(DEFAULT_WEAK_HASHES):  # md2WithRSAEncryption: no hash cryptography knows
        if algorithm.startswith(name) or algorithm.endswith(name):
            return name
    return None


def problems(facts: CertFacts, policy: Policy) -> tuple[Problem, ...]:
    """What ``policy`` finds wrong with one certificate, weaknesses first."""
    found: list[Problem] = []
    size, algorithm = facts.key_size, facts.key_algorithm
    if size is not None and algorithm in ("RSA", "DSA") and size < policy.minimum_rsa_key_size:
        found.append(
            Problem(
                WEAK,
                "KeyTooSmall",
                f"{algorithm} key of {size} bits, below {policy.minimum_rsa_key_size}",
            )
        )
    elif size is not None and algorithm == "EC" and size < policy.minimum_ec_key_size:
        found.append(
            Problem(WEAK, "KeyTooSmall", f"EC key of {size} bits, below {policy.minimum_ec_key_size}")
        )
    digest = _signature_hash(facts)
    if digest is not None and digest in policy.weak_signature_hashes:
        found.append(
            Problem(WEAK, "WeakSignature", f"signed with {facts.signature_algorithm or digest}, a weak hash")
        )
    if policy.verify_chains and facts.chain_problem:
        found.append(Problem(CHAIN, "BrokenChain", facts.chain_problem))
    return tuple(found)
