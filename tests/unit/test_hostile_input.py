"""Hostile input never stops anything: certificates built byte by byte with every kind of defect
(tests/hostile.py), odd but legal dates, and arbitrary facts and specs fed to the pure core."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.messages import (
    CertCheckStatus,
    Certificate,
    Condition,
    SecretObserved,
    State,
    object_decoder,
)
from services.domain import model, states
from services.domain.certs import CertError, CertFacts, from_wire, to_wire
from services.domain.decode import find_certificates
from services.domain.pem import parse_pem_certificate
from services.evaluator import core
from services.watcher.extract import RawSecret, secret_observed
from tests import hostile

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
MALFORMED = hostile.malformed()
ODD = hostile.odd_but_readable()


def spec(threshold: int = 30) -> model.CertCheckSpec:
    return model.CertCheckSpec("ns", "check", "uid-check", 1, threshold, resource_version="7")


def secret_view(*parsed: CertFacts | CertError) -> model.SecretView:
    entries = tuple(model.CertEntry("tls.crt", i, p) for i, p in enumerate(parsed))
    return model.SecretView("ns", "app", "uid-app", {"app": "x"}, {}, entries, resource_version="5")


def evaluate(*parsed: CertFacts | CertError, threshold: int = 30) -> core.Evaluation:
    return core.evaluate(spec(threshold), [secret_view(*parsed)], {}, None, NOW)


@pytest.mark.parametrize("defect", sorted(MALFORMED))
def test_a_malformed_certificate_is_an_invalid_entry_with_its_reason(defect: str) -> None:
    parsed = parse_pem_certificate(hostile.pem(MALFORMED[defect]))
    if isinstance(parsed, CertFacts):  # cryptography tolerates a few defects in display-only fields
        assert defect in {
            "SAN extension holds garbage",
            "SAN holds a DNS name that is not ASCII",
            "the same extension twice",
            "basicConstraints is garbage",
            "key usage holds a BOOLEAN",
        }, f"{defect} was read as a valid certificate"
        return
    assert parsed.reason.startswith(("malformed certificate: ", "serial number", "notBefore"))
    evaluation = evaluate(parsed)
    assert evaluation.status.invalid_count == 1
    assert evaluation.status.certificates[0].reason == parsed.reason


@pytest.mark.parametrize("defect", sorted(MALFORMED))
def test_the_watcher_reads_any_malformed_value_without_raising(defect: str) -> None:
    der = MALFORMED[defect]
    for value in (der, hostile.pem(der).encode(), base64.b64encode(der)):
        found = find_certificates("tls.crt", value, {})
        assert found.pem or found.error


@pytest.mark.parametrize("defect", sorted(MALFORMED))
def test_a_secret_holding_a_malformed_certificate_is_observed_with_its_other_keys(defect: str) -> None:
    good = hostile.pem(hostile.certificate())
    data = {
        "tls.crt": base64.b64encode(MALFORMED[defect]).decode(),
        "ca.crt": base64.b64encode(good.encode()).decode(),
    }
    secret = msgspec.convert(
        {
            "metadata": {"name": "s", "uid": "u", "resourceVersion": "1", "namespace": "ns"},
            "type": "kubernetes.io/tls",
            "data": data,
        },
        RawSecret,
    )
    observed = secret_observed(secret)
    by_key = {source.key: source for source in observed.sources}
    assert [c.subject_cn for c in by_key["ca.crt"].certs] == ["hostile.test"]
    assert by_key["tls.crt"].certs or by_key["tls.crt"].error
    # What was published reads back as the same facts, or the same reason, on the other side.
    sent = object_decoder.decode(msgspec.json.encode(observed))
    assert isinstance(sent, SecretObserved)
    for source, received in zip(observed.sources, sent.sources, strict=True):
        assert [from_wire(c) for c in received.certs] == [from_wire(c) for c in source.certs]


@pytest.mark.parametrize("oddity", sorted(ODD))
def test_an_odd_certificate_crosses_the_bus_as_the_same_facts(oddity: str) -> None:
    parsed = parse_pem_certificate(hostile.pem(ODD[oddity]))
    received = msgspec.json.decode(msgspec.json.encode(to_wire(parsed)), type=Certificate)
    assert from_wire(received) == parsed


@pytest.mark.parametrize(
    "forged",
    [
        Certificate(),
        Certificate(not_after=datetime(2030, 1, 1, tzinfo=UTC)),
        Certificate(not_before=datetime(2031, 1, 1, tzinfo=UTC), not_after=datetime(2030, 1, 1, tzinfo=UTC)),
        Certificate(not_before=datetime(2029, 1, 1), not_after=datetime(2030, 1, 1)),
    ],
    ids=["no dates", "no notBefore", "dates out of order", "dates without a zone"],
)
def test_facts_from_the_bus_that_no_certificate_can_have_become_an_invalid_entry(forged: Certificate) -> None:
    # Whoever can publish on the bus is not trusted: the reader checks what the watcher checked.
    received = msgspec.json.decode(msgspec.json.encode(forged), type=Certificate)
    assert isinstance(from_wire(received), CertError)


def test_names_from_the_bus_are_bounded_as_the_watchers_are() -> None:
    forged = Certificate(
        not_before=datetime(2029, 1, 1, tzinfo=UTC),
        not_after=datetime(2030, 1, 1, tzinfo=UTC),
        subject_cn="x" * 100_000,
        dns_names=["y" * 1000] * 10_000,
    )
    facts = from_wire(forged)
    assert isinstance(facts, CertFacts)
    assert len(facts.subject_cn or "") <= 256 and len(facts.dns_names) <= 100
    assert all(len(name) <= 256 for name in facts.dns_names)


@pytest.mark.parametrize("oddity", sorted(ODD))
def test_an_odd_but_legal_certificate_is_read_and_evaluated(oddity: str) -> None:
    parsed = parse_pem_certificate(hostile.pem(ODD[oddity]))
    assert isinstance(parsed, CertFacts), parsed
    evaluation = evaluate(parsed)
    assert evaluation.status.target_certs_count == 1
    entry = evaluation.status.certificates[0]
    assert entry.not_after and len(entry.not_after) == 20  # RFC 3339, four-digit year
    assert len(entry.dns_names or []) <= core.STATUS_DNS_NAMES
    assert len(entry.subject or "") <= 256


def test_a_certificate_without_a_well_defined_expiration_is_valid_and_never_scheduled_past_the_bus() -> None:
    parsed = parse_pem_certificate(
        hostile.pem(ODD["notAfter 99991231235959Z (RFC 5280's no well-defined expiration)"])
    )
    assert isinstance(parsed, CertFacts)
    evaluation = evaluate(parsed, threshold=30)
    assert evaluation.status.valid_count == 1
    assert evaluation.status.certificates[0].not_after == "9999-12-31T23:59:59Z"
    # The boundaries (threshold crossing, expiry) lie past 2262: the evaluator does not schedule those.
    assert evaluation.next_due is None or evaluation.next_due.year >= 9999


def test_a_threshold_beyond_every_date_makes_a_certificate_expiring_soon_without_overflowing() -> None:
    far = CertFacts(NOW - timedelta(days=1), NOW + timedelta(days=400), "a", "b", "1", "f")
    evaluation = evaluate(far, threshold=10**9)
    assert evaluation.status.expiring_soon_count == 1


def test_a_failed_evaluation_says_why_in_ready_and_a_warning_event() -> None:
    observed = evaluate(
        CertFacts(NOW - timedelta(days=1), NOW + timedelta(days=400), "a", "b", "1", "f")
    ).status
    failed = core.failed_evaluation(spec(), observed, "KeyError: 'x'", NOW)
    ready = {c.type: c for c in failed.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "EvaluationFailed")
    assert "KeyError" in ready.message
    assert failed.status.valid_count == observed.valid_count  # the last known figures stay
    assert [(e.type, e.reason, e.involved_kind) for e in failed.events] == [
        ("Warning", "EvaluationFailed", "CertCheck")
    ]


def test_the_status_stays_within_its_byte_budget_whatever_the_cap() -> None:
    many = [
        CertFacts(
            NOW, NOW + timedelta(days=i + 1), "x" * 256, "y" * 256, "1" * 80, f"{i:064x}", ("a" * 253,) * 10
        )
        for i in range(5000)
    ]
    evaluation = core.evaluate(spec(), [secret_view(*many)], {}, None, NOW, status_cap=100_000)
    assert len(msgspec.json.encode(evaluation.status)) <= core.STATUS_MAX_BYTES + 4096
    assert evaluation.status.certificates_omitted == 5000 - len(evaluation.status.certificates) > 0


# --- the pure core, fed anything -------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC)
)
texts = st.one_of(st.none(), st.text(max_size=30), moments.map(lambda m: m.isoformat()))


@st.composite
def cert_facts(draw: st.DrawFn) -> CertFacts:
    first, second = draw(moments), draw(moments)
    return CertFacts(
        min(first, second),
        max(first, second),
        draw(st.text(max_size=5)),
        None,
        "1",
        draw(st.text(max_size=8)),
    )


@st.composite
def observed_status(draw: st.DrawFn) -> CertCheckStatus | None:
    if draw(st.booleans()):
        return None
    condition = Condition(
        type=draw(
            st.sampled_from(["Ready", "ExpiringSoon", "Expired", "Invalid", "NotificationFailed", "X"])
        ),
        status=draw(st.sampled_from(["True", "False", "Unknown", ""])),
        reason=draw(st.text(max_size=10)),
        message="",
        last_transition_time=draw(texts) or "",
    )
    return CertCheckStatus(conditions=[condition], last_evaluation_time=draw(texts))


@settings(max_examples=400, deadline=None)
@given(
    parsed=st.lists(st.one_of(cert_facts(), st.builds(CertError, st.text(max_size=20))), max_size=6),
    threshold=st.integers(min_value=-(10**12), max_value=10**12),
    observed=observed_status(),
    now=moments,
)
def test_the_core_never_raises_whatever_the_facts_threshold_status_and_clock(
    parsed: list[CertFacts | CertError], threshold: int, observed: CertCheckStatus | None, now: datetime
) -> None:
    evaluation = core.evaluate(spec(threshold), [secret_view(*parsed)], {}, observed, now)
    assert evaluation.status.target_certs_count == len(parsed)
    assert evaluation.next_due is None or evaluation.next_due > now
    for facts in parsed:
        if isinstance(facts, CertFacts):
            assert states.classify(facts, threshold, now) in set(State)
