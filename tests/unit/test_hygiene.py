"""Problems before expiry: key and signature facts read by the watcher, chains verified there, and what
a CertCheck's policy makes of them in the evaluator (conditions, status, annotations, Events) and the
exporter."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from schemas import annotations as ann
from schemas.messages import HygienePolicy
from services.domain import hygiene
from services.domain.certs import CertFacts
from services.domain.chains import anchor_problem, chain_problems
from services.domain.model import CertCheckSpec, CertEntry, Coverage, SecretView
from services.domain.pem import parse_pem_certificate
from services.domain.view import View
from services.evaluator import core
from services.exporter.collector import families
from services.watcher.extract import RawSecret, secret_observed
from tests import pki
from tests.sources import certcheck_observed, facts_source, tls_secret_observed

NOW = datetime.now(UTC)


def facts(cert: x509.Certificate) -> CertFacts:
    parsed = parse_pem_certificate(pki.pem(cert).decode())
    assert isinstance(parsed, CertFacts), parsed
    return parsed


def pems(*certs: x509.Certificate) -> list[str]:
    return [pki.pem(c).decode() for c in certs]


class TestFacts:
    def test_an_rsa_key_and_its_signature_are_read(self) -> None:
        found = facts(pki.issue("rsa.test", pki.rsa_key(1024)))
        assert (found.key_algorithm, found.key_size) == ("RSA", 1024)
        assert (found.signature_algorithm, found.signature_hash) == ("sha256WithRSAEncryption", "sha256")

    def test_an_ec_key_reports_its_curve_size_and_eddsa_has_no_hash(self) -> None:
        assert facts(pki.issue("ec.test", pki.ec_key())).key_size == 256
        ed = facts(pki.issue("ed.test", ed25519.Ed25519PrivateKey.generate()))
        assert (ed.key_algorithm, ed.signature_algorithm, ed.signature_hash) == ("Ed25519", "ed25519", None)

    def test_sha1_and_md5_signatures_are_named(self) -> None:
        key = pki.rsa_key()
        cert = pki.issue("old.test", key)
        assert facts(pki.resigned(cert, key, "sha1")).signature_hash == "sha1"
        assert facts(pki.resigned(cert, key, "md5")).signature_algorithm == "md5WithRSAEncryption"


class TestPolicy:
    def test_defaults_flag_small_rsa_keys_and_sha1_but_not_good_certificates(self) -> None:
        key = pki.rsa_key(1024)
        weak = facts(pki.resigned(pki.issue("weak.test", key), key, "sha1"))
        assert [p.reason for p in hygiene.problems(weak, hygiene.DEFAULT_POLICY)] == [
            "KeyTooSmall",
            "WeakSignature",
        ]
        assert hygiene.problems(facts(pki.issue("ok.test", pki.ec_key())), hygiene.DEFAULT_POLICY) == ()

    def test_a_policy_sets_its_own_limits_and_hash_names_in_any_spelling(self) -> None:
        good = facts(pki.issue("rsa.test", pki.rsa_key(2048)))
        strict = hygiene.policy_of(
            HygienePolicy(minimum_rsa_key_size=3072, weak_signature_hashes=["SHA-256"])
        )
        assert [p.message for p in hygiene.problems(good, strict)] == [
            "RSA key of 2048 bits, below 3072",
            "signed with sha256WithRSAEncryption, a weak hash",
        ]
        lenient = hygiene.policy_of(HygienePolicy(minimum_rsa_key_size=512, weak_signature_hashes=[]))
        key = pki.rsa_key(1024)
        assert hygiene.problems(facts(pki.resigned(pki.issue("w.test", key), key, "sha1")), lenient) == ()

    def test_hostile_policy_values_are_bounded(self) -> None:
        policy = hygiene.policy_of(
            HygienePolicy(
                minimum_rsa_key_size=-5, minimum_ec_key_size=1 << 40, weak_signature_hashes=["x"] * 99
            )
        )
        assert (policy.minimum_rsa_key_size, policy.minimum_ec_key_size) == (0, 1 << 16)
        assert policy.weak_signature_hashes == frozenset({"x"})

    def test_the_strictest_of_several_policies_finds_what_any_of_them_finds(self) -> None:
        a = hygiene.Policy(
            minimum_rsa_key_size=4096, weak_signature_hashes=frozenset({"sha1"}), verify_chains=False
        )
        b = hygiene.Policy(minimum_ec_key_size=384, weak_signature_hashes=frozenset({"md5"}))
        both = hygiene.strictest([a, b])
        assert (both.minimum_rsa_key_size, both.minimum_ec_key_size) == (4096, 384)
        assert both.weak_signature_hashes == {"sha1", "md5"} and both.verify_chains
        assert hygiene.strictest([]) == hygiene.DEFAULT_POLICY


class TestChains:
    root = pki.ca("root")
    intermediate = pki.ca("intermediate", root)
    leaf_key = pki.ec_key()
    leaf = pki.issue("leaf.test", leaf_key, intermediate)

    def test_a_chain_in_order_has_no_problem(self) -> None:
        assert chain_problems("tls.crt", pems(self.leaf, self.intermediate[0], self.root[0])) == [None] * 3

    def test_a_chain_out_of_order_names_the_certificate_that_issued_it(self) -> None:
        problems = chain_problems("tls.crt", pems(self.leaf, self.root[0], self.intermediate[0]))
        assert problems[0] == (
            "chain out of order: issued by tls.crt[2], not by the next certificate tls.crt[1]"
        )

    def test_a_missing_intermediate_breaks_the_chain(self) -> None:
        other = pki.ca("other intermediate", self.root)
        [problem, last] = chain_problems("tls.crt", pems(self.leaf, other[0]))
        assert problem is not None and problem.startswith("chain broken: not issued by the next certificate")
        assert "CN=other intermediate" in problem and last is None

    def test_a_forged_issuer_of_the_same_name_fails_on_its_signature(self) -> None:
        impostor = pki.issue("intermediate", pki.ec_key(), self.root, ca=True)
        [problem, _] = chain_problems("tls.crt", pems(self.leaf, impostor))
        assert problem is not None and problem.startswith("chain broken")

    def test_a_bundle_of_ca_certificates_or_of_leaves_is_not_a_chain(self) -> None:
        unrelated = pki.ca("unrelated root")
        assert chain_problems("ca.crt", pems(self.root[0], unrelated[0])) == [None, None]
        assert chain_problems("bundle.pem", pems(self.leaf, unrelated[0]))[0] is not None
        side_by_side = pki.issue("other.test", pki.ec_key(), self.intermediate)
        assert chain_problems("pinned.pem", pems(self.leaf, side_by_side)) == [None, None]

    def test_a_hostile_bundle_of_same_named_certificates_costs_bounded_work(self) -> None:
        from services.domain import chains

        same_name = [pki.issue("intermediate", pki.ec_key(), self.root, ca=True) for _ in range(40)]
        chains.issued_by.cache_clear()
        assert chain_problems("tls.crt", pems(self.leaf, *same_name)) == [None] * 41  # too long to check
        many = [pki.issue("intermediate", pki.ec_key(), self.root, ca=True) for _ in range(80)]
        # Impostors all: reported, after at most MAX_ANCHORS signature checks.
        assert anchor_problem(pems(self.leaf), pems(*many)) is not None
        assert chains.issued_by.cache_info().misses <= chains.MAX_ANCHORS

    def test_ca_crt_must_issue_or_be_part_of_the_chain(self) -> None:
        chain = pems(self.leaf, self.intermediate[0])
        assert anchor_problem(chain, pems(self.root[0])) is None
        assert anchor_problem(chain, pems(self.intermediate[0])) is None
        problem = anchor_problem(chain, pems(pki.ca("someone else")[0]))
        assert problem == "chain incomplete: not issued by ca.crt (CN=someone else)"

    def test_the_watcher_publishes_chain_problems_with_the_certificate_facts(self) -> None:
        data = {
            "tls.crt": pki.pem(self.leaf, self.root[0]),
            "tls.key": pki.key_pem(self.leaf_key),
            "ca.crt": pki.pem(pki.ca("unrelated")[0]),
        }
        observed = secret_observed(_raw_secret({k: base64.b64encode(v).decode() for k, v in data.items()}))
        [tls] = [s for s in observed.sources if s.key == "tls.crt"]
        assert (
            tls.certs[0].chain_problem is not None and "not issued by the next" in tls.certs[0].chain_problem
        )
        assert tls.certs[1].chain_problem == "chain incomplete: not issued by ca.crt (CN=unrelated)"
        assert tls.certs[0].key_algorithm == "EC" and tls.certs[0].signature_hash == "sha256"


def _raw_secret(data: dict[str, str]) -> RawSecret:
    return msgspec.convert(
        {
            "metadata": {"name": "s", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
            "type": "kubernetes.io/tls",
            "data": data,
        },
        RawSecret,
    )


def secret_view(name: str, *certs: CertFacts, annotations: dict[str, str] | None = None) -> SecretView:
    return SecretView(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        labels={},
        annotations=annotations or {},
        entries=tuple(CertEntry("tls.crt", i, c) for i, c in enumerate(certs)),
    )


SPEC = CertCheckSpec("ns", "check", "uid-check", 1, 30)


class TestEvaluation:
    key = pki.rsa_key(1024)
    weak_cert = pki.resigned(pki.issue("weak.test", key), key, "sha1")
    good_cert = pki.issue("good.test", pki.ec_key())
    weak, good = facts(weak_cert), facts(good_cert)

    def evaluate(self, *secrets: SecretView, spec: CertCheckSpec = SPEC) -> core.Evaluation:
        coverage = {s.name: Coverage(("check",), 30, spec.policy) for s in secrets}
        return core.evaluate(spec, secrets, coverage, None, NOW)

    def test_a_weak_certificate_raises_weak_with_examples_and_lists_its_problems(self) -> None:
        evaluation = self.evaluate(secret_view("w", self.weak), secret_view("g", self.good))
        conditions = {c.type: c for c in evaluation.status.conditions}
        assert (conditions["Weak"].status, conditions["Weak"].reason) == ("True", "WeakCertificates")
        assert "w/tls.crt[0] (RSA key of 1024 bits, below 2048; signed with sha1WithRSAEncryption" in (
            conditions["Weak"].message
        )
        assert (conditions["ChainInvalid"].status, conditions["ChainInvalid"].reason) == (
            "False",
            "ChainsValid",
        )
        assert (evaluation.status.weak_count, evaluation.status.broken_chain_count) == (1, 0)
        [entry] = [c for c in evaluation.status.certificates if c.name == "w"]
        assert (entry.key_algorithm, entry.key_size, entry.signature_algorithm) == (
            "RSA",
            1024,
            "sha1WithRSAEncryption",
        )
        assert entry.problems is not None and len(entry.problems) == 2

    def test_the_secret_is_annotated_and_warned_once_about_its_problems(self) -> None:
        first = self.evaluate(secret_view("w", self.weak))
        [patch] = first.annotation_patches
        text = patch.annotations[ann.PROBLEMS]
        assert text is not None and text.startswith("tls.crt[0]: RSA key of 1024 bits")
        [event] = [e for e in first.events if e.involved_kind == "Secret" and e.reason == "Weak"]
        assert event.type == "Warning" and text in event.message
        recorded = {k: v for k, v in patch.annotations.items() if v is not None}
        again = self.evaluate(secret_view("w", self.weak, annotations=recorded))
        assert again.annotation_patches == []
        assert not [e for e in again.events if e.reason == "Weak"]

    def test_one_secret_view_rated_under_two_policies_gives_each_its_own_problems(self) -> None:
        view = secret_view("w", self.weak)
        lenient = hygiene.Policy(minimum_rsa_key_size=1024, weak_signature_hashes=frozenset())
        spec = CertCheckSpec("ns", "check", "uid-check", 1, 30, policy=lenient)
        strict_coverage = {"w": Coverage(("check", "other"), 30, hygiene.DEFAULT_POLICY)}
        evaluation = core.evaluate(spec, [view], strict_coverage, None, NOW)
        assert evaluation.status.weak_count == 0  # the CertCheck's own, lenient policy
        # The annotation follows the strictest policy of the CertChecks covering the Secret.
        [patch] = evaluation.annotation_patches
        assert (patch.annotations[ann.PROBLEMS] or "").startswith("tls.crt[0]: RSA key of 1024 bits")
        assert self.evaluate(view).status.weak_count == 1  # the same view, the default policy

    def test_a_secret_without_coverage_given_is_judged_by_the_certchecks_own_policy(self) -> None:
        lenient = hygiene.Policy(minimum_rsa_key_size=1024, weak_signature_hashes=frozenset())
        spec = CertCheckSpec("ns", "check", "uid-check", 1, 30, policy=lenient)
        evaluation = core.evaluate(spec, [secret_view("w", self.weak)], {}, None, NOW)
        [patch] = evaluation.annotation_patches
        assert patch.annotations.get(ann.PROBLEMS) is None

    def test_a_broken_chain_alone_warns_as_chain_invalid(self) -> None:
        broken = CertFacts(**{**_fields(self.good), "chain_problem": "chain broken: not issued by the next"})
        evaluation = self.evaluate(secret_view("b", broken))
        conditions = {c.type: c for c in evaluation.status.conditions}
        assert (conditions["ChainInvalid"].status, conditions["ChainInvalid"].reason) == (
            "True",
            "BrokenChains",
        )
        assert [e.reason for e in evaluation.events if e.involved_kind == "Secret"] == ["ChainInvalid"]
        off = CertCheckSpec("ns", "check", "uid-check", 1, 30, policy=hygiene.Policy(verify_chains=False))
        quiet = self.evaluate(secret_view("b", broken), spec=off)
        assert {c.type: c.reason for c in quiet.status.conditions}["ChainInvalid"] == "NotChecked"
        assert quiet.annotation_patches[0].annotations.get(ann.PROBLEMS) is None

    def test_the_exporter_serves_one_series_per_problem_by_the_certchecks_policy(self) -> None:
        view = View()
        for seq, policy in ((1, None), (2, HygienePolicy(minimum_ec_key_size=384))):
            view.apply(seq, certcheck_observed(f"check{seq}", policy=policy, resource_version=str(seq)))
        for seq, name, cert in ((3, "weak", self.weak_cert), (4, "good", self.good_cert)):
            view.apply(
                seq,
                tls_secret_observed(name, facts_source("tls.crt", pki.pem(cert)), resource_version=str(seq)),
            )
        found = {m.name: [(s.labels, s.value) for s in m.samples] for m in families([view], NOW)}
        problems = sorted(
            (labels["certcheck"], labels["secret_name"], labels["reason"])
            for labels, _ in found["certcheck_certificate_problem"]
        )
        assert problems == [
            ("check1", "weak", "KeyTooSmall"),
            ("check1", "weak", "WeakSignature"),
            ("check2", "good", "KeyTooSmall"),  # a P-256 key, below check2's 384
            ("check2", "weak", "KeyTooSmall"),
            ("check2", "weak", "WeakSignature"),
        ]
        counts = {
            (labels["certcheck"], labels["kind"]): value
            for labels, value in found["certcheck_certcheck_certificates_with_problems"]
        }
        assert counts == {
            ("check1", "Weak"): 1,
            ("check1", "Chain"): 0,
            ("check2", "Weak"): 2,
            ("check2", "Chain"): 0,
        }
        # Both CertChecks cover both Secrets: the annotations follow the stricter policy.
        assert view.coverage("ns", "good").policy.minimum_ec_key_size == 384


def _fields(found: CertFacts) -> dict[str, object]:
    return {name: getattr(found, name) for name in CertFacts.__slots__}
