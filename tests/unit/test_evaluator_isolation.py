"""The evaluator's adapter isolates each CertCheck: one whose evaluation raises is recorded as failed
and retried with backoff, the others are published as usual. The bus is a recording fake here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from nats.js.errors import APIError, NotFoundError

from devcluster.certs import expiring_in
from schemas import subjects
from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckObserved,
    CertCheckStatus,
    Due,
    EvaluationResult,
    EventIntent,
    LabelSelector,
    NotificationSpec,
    NotificationTarget,
    ObjectDeleted,
    SecretObserved,
    due_decoder,
    encoder,
    kube_event_decoder,
    result_decoder,
)
from schemas.streams import (
    HDR_DEAD_REASON,
    HDR_DEAD_STREAM_SEQ,
    HDR_EXPECTED_LAST_SUBJECT_SEQ,
    HDR_MSG_TTL,
    HDR_SCHEDULE,
    RECORDER_APPLIED_BUCKET,
    AppliedMark,
)
from services.common.bus import Bus
from services.common.settings import Settings
from services.domain import model
from services.domain.view import Effects
from services.evaluator import core, incremental, service
from services.evaluator.service import Evaluator, PublishFailed
from tests import subjects as test_subjects
from tests.fakes import FakeKeyValue
from tests.sources import facts_source

CERT, _ = expiring_in(10)


@dataclass
class FakeNats:
    max_payload: int = 1 << 20


@dataclass
class FakeJetStream:
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    fail_subjects: set[str] = field(default_factory=set)
    reads: list[str] = field(default_factory=list)  # get_last_msg subjects
    _publish_async_futures: dict[str, Any] = field(default_factory=dict)
    _publish_async_pending_semaphore: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)

    async def publish_async(self, subject: str, payload: bytes, headers: Any = None, **_: Any) -> Any:
        await self.publish(subject, payload, headers=headers)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    # per subject: seq, headers, payload
    last: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    async def get_last_msg(self, stream: str, subject: str) -> Any:
        self.reads.append(subject)
        if subject not in self.last:
            raise NotFoundError
        seq, headers, data = self.last[subject]
        return SimpleNamespace(seq=seq, headers=headers, data=data)

    async def publish(self, subject: str, payload: bytes, stream: str = "", headers: Any = None) -> Any:
        if subject in self.fail_subjects:
            raise ConnectionError("bus unavailable for this subject")
        headers = dict(headers or {})
        expected = headers.get(HDR_EXPECTED_LAST_SUBJECT_SEQ)
        if expected is not None and int(expected) != self.last.get(subject, (0, {}, b""))[0]:
            raise APIError(err_code=10071)
        self.published.append((subject, payload, headers))
        self.last[subject] = (len(self.published), headers, payload)
        return type("PubAck", (), {"seq": len(self.published)})()

    async def purge_stream(self, stream: str, subject: str = "") -> None:
        self.purged.append(subject)

    buckets: dict[str, FakeKeyValue] = field(default_factory=dict)

    async def key_value(self, bucket: str) -> FakeKeyValue:
        return self.buckets.setdefault(bucket, FakeKeyValue())

    def results(self) -> dict[str, EvaluationResult]:
        found = {}
        for subject, payload, _ in self.published:
            if subject.startswith("certcheck.v1.results."):
                result = result_decoder.decode(payload)
                assert isinstance(result, EvaluationResult)
                found[result.name] = result
        return found

    def events(self) -> list[EventIntent]:
        return [
            kube_event_decoder.decode(payload)
            for subject, payload, _ in self.published
            if subject.startswith("certcheck.v1.kubeevents.")
        ]

    def schedules(self) -> dict[str, tuple[Due, str]]:
        return {
            subject: (due_decoder.decode(payload), headers[HDR_SCHEDULE])
            for subject, payload, headers in self.published
            if subject.startswith("certcheck.v1.schedule.") and HDR_SCHEDULE in headers
        }


def certcheck(
    name: str, seq: int, app: str, notification: NotificationSpec | None = None
) -> CertCheckObserved:
    """A CertCheck in namespace ``ns`` selecting ``app=<app>``, threshold 30 days."""
    return CertCheckObserved(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        resource_version=str(seq),
        generation=1,
        threshold_days=30,
        selector=LabelSelector(match_labels={"app": app}),
        notification=notification,
    )


def tls_secret(name: str, seq: int, app: str) -> SecretObserved:
    """A TLS Secret in namespace ``ns`` labelled ``app=<app>``, its certificate expiring in 10 days."""
    return SecretObserved(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        resource_version=str(seq),
        type="kubernetes.io/tls",
        labels={"app": app},
        sources=[facts_source("tls.crt", CERT)],
    )


def evaluator_with_three() -> tuple[Evaluator, FakeJetStream]:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    seq = 0
    for name in ("alpha", "broken", "gamma"):
        evaluator.view.apply(seq + 1, certcheck(name, seq + 1, name))
        evaluator.view.apply(seq + 2, tls_secret(f"{name}-tls", seq + 2, name))
        seq += 2
    return evaluator, js


@pytest.fixture
def broken_core(monkeypatch: pytest.MonkeyPatch) -> None:
    real = incremental.evaluate_changes

    def evaluate(kept: Any, spec: model.CertCheckSpec, *args: Any, **kwargs: Any) -> core.Evaluation:
        if spec.name == "broken":
            raise KeyError("a bug met by this CertCheck only")
        return real(kept, spec, *args, **kwargs)

    monkeypatch.setattr(incremental, "evaluate_changes", evaluate)


def keys() -> set[tuple[str, str]]:
    return {("ns", "alpha"), ("ns", "broken"), ("ns", "gamma")}


@pytest.mark.usefixtures("broken_core")
def test_a_certcheck_whose_evaluation_raises_is_recorded_failed_and_the_others_are_evaluated() -> None:
    evaluator, js = evaluator_with_three()
    asyncio.run(evaluator.act(Effects(evaluate=keys()), "change"))
    results = js.results()
    assert set(results) == {"alpha", "broken", "gamma"}
    assert results["alpha"].status.expiring_soon_count == 1
    ready = {c.type: c for c in results["broken"].status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "EvaluationFailed")
    assert "KeyError" in ready.message
    assert [(e.involved_name, e.reason) for e in js.events() if e.type == "Warning"] == [
        ("alpha-tls", "ExpiringSoon"),
        ("alpha", "ExpiringSoon"),
        ("broken", "EvaluationFailed"),
        ("gamma-tls", "ExpiringSoon"),
        ("gamma", "ExpiringSoon"),
    ]


@pytest.mark.usefixtures("broken_core")
def test_a_failed_evaluation_is_retried_with_growing_backoff_then_given_up_to_the_dead_letters() -> None:
    evaluator, js = evaluator_with_three()
    broken_schedule = test_subjects.schedule_subject("ns", "broken")
    delays = []
    for attempt in range(service.MAX_EVALUATION_ATTEMPTS):
        js.published.clear()
        js.purged.clear()
        started = datetime.now(UTC).replace(microsecond=0)
        asyncio.run(evaluator.act(Effects(evaluate={("ns", "broken")}), "due", {("ns", "broken"): attempt}))
        schedules = js.schedules()
        if attempt + 1 < service.MAX_EVALUATION_ATTEMPTS:
            due, _ = schedules[broken_schedule]
            assert due.attempt == attempt + 1
            delays.append((datetime.fromisoformat(due.due_at) - started).total_seconds())
        else:
            assert broken_schedule not in schedules  # cancelled: a plain message replaced it
            assert [p for s, p, _ in js.published if s == broken_schedule] == [b""]
            parked = [s for s, _, _ in js.published if s.startswith("certcheck.v1.deadletter.")]
            assert parked == [subjects.deadletter_subject(subjects.result_subject("ns", "broken"))]
    assert delays == sorted(delays) and delays[0] <= 2 and delays[-1] >= 200


def test_a_bus_failure_for_one_certcheck_still_publishes_the_others_and_asks_for_redelivery() -> None:
    evaluator, js = evaluator_with_three()
    js.fail_subjects.add(subjects.result_subject("ns", "alpha"))
    with pytest.raises(PublishFailed):
        asyncio.run(evaluator.act(Effects(evaluate=keys()), "change"))
    assert set(js.results()) == {"broken", "gamma"}


def test_a_due_time_past_what_the_bus_can_schedule_is_not_scheduled() -> None:
    evaluator, js = evaluator_with_three()
    asyncio.run(evaluator.schedule(("ns", "alpha"), datetime(2030, 1, 1, tzinfo=UTC)))
    asyncio.run(evaluator.schedule(("ns", "alpha"), datetime(9999, 12, 31, tzinfo=UTC)))
    subject, payload, headers = js.published[-1]
    assert subject == test_subjects.schedule_subject("ns", "alpha")
    assert payload == b"" and HDR_SCHEDULE not in headers  # a plain message cancels the pending schedule


def test_an_evaluation_from_an_older_view_never_replaces_or_cancels_a_newer_schedule() -> None:
    evaluator, js = evaluator_with_three()
    key = ("ns", "alpha")
    asyncio.run(evaluator.schedule(key, datetime(2030, 1, 1, tzinfo=UTC), view_seq=10))
    before = list(js.published)
    asyncio.run(evaluator.schedule(key, datetime(2029, 1, 1, tzinfo=UTC), view_seq=9))
    asyncio.run(evaluator.schedule(key, None, view_seq=9))
    assert js.published == before
    asyncio.run(evaluator.schedule(key, datetime(2029, 1, 1, tzinfo=UTC), view_seq=11))
    assert js.schedules()[test_subjects.schedule_subject(*key)][0].due_at == "2029-01-01T00:00:00Z"


def test_a_schedule_left_as_it_is_is_neither_read_nor_written_again_until_a_sweep() -> None:
    evaluator, js = evaluator_with_three()
    key, subject = ("ns", "alpha"), test_subjects.schedule_subject("ns", "alpha")
    later = datetime.now(UTC) + timedelta(days=3)
    asyncio.run(evaluator.schedule(key, later, view_seq=10))
    asyncio.run(evaluator.schedule(key, later, view_seq=11))
    assert (js.reads.count(subject), _published_on(js, subject)) == (1, 1)
    asyncio.run(evaluator.schedule(key, later + timedelta(hours=1), view_seq=12))  # it moved
    assert (js.reads.count(subject), _published_on(js, subject)) == (2, 2)
    asyncio.run(evaluator.sweep("resync"))  # the safety net reads every schedule again
    assert js.reads.count(subject) == 3


def test_a_schedule_about_to_fire_or_a_retry_is_always_written_again() -> None:
    evaluator, js = evaluator_with_three()
    key, subject = ("ns", "alpha"), test_subjects.schedule_subject("ns", "alpha")
    soon = datetime.now(UTC) + timedelta(minutes=1)  # it may have fired by the next evaluation
    for view_seq in (10, 11):
        asyncio.run(evaluator.schedule(key, soon, view_seq=view_seq))
    later = datetime.now(UTC) + timedelta(days=3)
    for view_seq in (12, 13):
        asyncio.run(evaluator.schedule(key, later, attempt=1, view_seq=view_seq))
    assert _published_on(js, subject) == 4


def test_a_cancelled_schedule_is_cancelled_once() -> None:
    evaluator, js = evaluator_with_three()
    key, subject = ("ns", "alpha"), test_subjects.schedule_subject("ns", "alpha")
    asyncio.run(evaluator.schedule(key, datetime.now(UTC) + timedelta(days=3), view_seq=10))
    for view_seq in (11, 12, 13):
        asyncio.run(evaluator.schedule(key, None, view_seq=view_seq))
    assert (js.reads.count(subject), _published_on(js, subject)) == (2, 2)


def test_garbage_on_a_result_subject_is_replaced_by_the_next_result_not_a_stop() -> None:
    evaluator, js = evaluator_with_three()
    # Whoever can reach the bus may have published anything there: it is only the compare-and-set base.
    js.last[subjects.result_subject("ns", "alpha")] = (7, {}, b"\xff not json {")
    js.published.extend([("x", b"", {})] * 7)
    asyncio.run(evaluator.act(Effects(evaluate=keys()), "change"))
    assert js.results()["alpha"].status.expiring_soon_count == 1


def _published_on(js: FakeJetStream, subject: str) -> int:
    return sum(1 for published, _, _ in js.published if published == subject)


def test_a_result_subject_is_read_once_then_the_evaluator_builds_on_what_it_published() -> None:
    evaluator, js = evaluator_with_three()
    subject = subjects.result_subject("ns", "alpha")
    for _ in range(3):
        asyncio.run(evaluator.act(Effects(evaluate={("ns", "alpha")}), "change"))
    assert js.reads.count(subject) == 1
    assert _published_on(js, subject) == 3  # each compare-and-set held against its own last publish


def test_a_result_someone_else_published_since_is_read_and_built_on_not_overwritten_blindly() -> None:
    evaluator, js = evaluator_with_three()
    subject = subjects.result_subject("ns", "alpha")
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "alpha")}), "change"))
    seq, headers, payload = js.last[subject]
    js.last[subject] = (seq + 100, headers, payload)  # another publisher (a previous holder, anyone)
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "alpha")}), "change"))
    assert js.reads.count(subject) == 2  # the compare-and-set failed: the subject was read again
    assert _published_on(js, subject) == 2 and js.last[subject][0] != seq + 100


def lifecycle_events(js: FakeJetStream) -> list[tuple[str, dict[str, str]]]:
    return [(s, h) for s, _, h in js.published if s.startswith("certcheck.v1.events.")]


async def acted(evaluator: Evaluator, effects: Effects, trigger: str) -> None:
    """Act, and let what the evaluations told be written (it is, in the background, as they return)."""
    await evaluator.act(effects, trigger)
    await (await evaluator.lifecycle()).flush()


@pytest.mark.usefixtures("broken_core")
def test_each_certificate_is_told_once_as_a_public_event_and_a_failed_evaluation_tells_nothing() -> None:
    evaluator, js = evaluator_with_three()
    asyncio.run(acted(evaluator, Effects(evaluate=keys()), "change"))
    told = lifecycle_events(js)
    assert sorted(subject for subject, _ in told) == [
        "certcheck.v1.events.default.ns.discovered.secret.alpha-tls",
        "certcheck.v1.events.default.ns.discovered.secret.gamma-tls",
    ]
    assert all(h["ce-id"] == h["Nats-Msg-Id"] for _, h in told)
    # Evaluated again, from memory and from the bucket alone (a restarted replica): nothing new to tell.
    asyncio.run(acted(evaluator, Effects(evaluate=keys()), "resync"))
    restarted = Evaluator(evaluator.bus, Settings(), evaluator.partition)
    restarted.view = evaluator.view
    asyncio.run(restarted.act(Effects(evaluate=keys()), "start"))
    assert lifecycle_events(js) == told


def test_a_removed_certcheck_tells_every_certificate_removed() -> None:
    evaluator, js = evaluator_with_three()
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "alpha")}), "change"))
    asyncio.run(evaluator.act(Effects(removed={("ns", "alpha", "uid-alpha")}), "change"))
    [_, (subject, _)] = lifecycle_events(js)
    assert subject == "certcheck.v1.events.default.ns.removed.secret.alpha-tls"
    data = next(p for s, p, _ in js.published if s == subject)
    assert b'"removedBecause":"CertCheckDeleted"' in data and b'"thresholdDays":30' in data


def test_an_evaluation_whose_result_stood_is_kept_and_a_resync_evaluates_from_scratch() -> None:
    evaluator, js = evaluator_with_three()
    asyncio.run(evaluator.act(Effects(evaluate=keys()), "change"))
    entry = evaluator.view.certcheck(("ns", "alpha"))
    assert entry is not None and isinstance(entry.kept, incremental.Kept)
    entry.kept.index.ordered.clear()  # what was kept went wrong, somehow
    asyncio.run(evaluator.sweep("resync"))
    assert js.results()["alpha"].status.target_certs_count == 1


def test_an_evaluation_that_raised_keeps_nothing_to_start_the_next_from() -> None:
    evaluator, _ = evaluator_with_three()
    asyncio.run(evaluator.act(Effects(evaluate=keys()), "change"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(incremental, "evaluate_changes", _raises)
        asyncio.run(evaluator.act(Effects(evaluate={("ns", "alpha")}), "change"))
    entry = evaluator.view.certcheck(("ns", "alpha"))
    assert entry is not None and entry.kept is None


def _raises(*args: Any, **kwargs: Any) -> core.Evaluation:
    raise RuntimeError("a bug")


BIG_NAMES = {f"s{i:03d}" for i in range(80)}


def _big_certcheck(js: FakeJetStream) -> Evaluator:
    """A CertCheck of 80 Secrets not annotated yet (80 patches, ~20 kB) whose status lists all 80
    certificates (~37 kB), on a bus that carries 45 kB: its patches do not all fit its result."""
    nats = FakeNats(max_payload=service.RESULT_HEADROOM_BYTES + 45_000)
    settings = Settings(status_cap=100)
    evaluator = Evaluator(Bus(nc=nats, js=js), settings, test_subjects.partition("ns"))  # type: ignore[arg-type]
    evaluator.view.apply(1, certcheck("big", 1, "big"))
    for seq, name in enumerate(sorted(BIG_NAMES), start=2):
        evaluator.view.apply(seq, tls_secret(name, seq, "big"))
    return evaluator


def test_patches_beyond_what_a_result_carries_go_out_on_their_own_each_once() -> None:
    js = FakeJetStream()
    evaluator, names = _big_certcheck(js), BIG_NAMES
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    [(_, payload, _)] = [p for p in js.published if p[0] == subjects.result_subject("ns", "big")]
    result = result_decoder.decode(payload)
    assert isinstance(result, EvaluationResult)
    assert len(payload) <= 45_000 and result.annotation_patches
    alone = [
        result_decoder.decode(p)
        for s, p, _ in js.published
        if s.startswith(subjects.cleanup_subject("ns", ""))
    ]
    in_result = [p.name for p in result.annotation_patches]
    on_their_own = [m.patch.name for m in alone if isinstance(m, AnnotationCleanup)]
    assert len(alone) == len(on_their_own) > 0
    assert sorted(in_result + on_their_own) == sorted(names)


def _sent_alone(js: FakeJetStream) -> list[str]:
    return [s for s, _, _ in js.published if s.startswith(subjects.cleanup_subject("ns", ""))]


def test_a_patch_sent_on_its_own_goes_out_again_only_once_its_subject_moved_on_or_a_while_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = FakeJetStream()
    evaluator = _big_certcheck(js)
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    first = _sent_alone(js)
    assert first
    # Evaluated again before the annotations came back: the same patches, still their subjects' last.
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    assert _sent_alone(js) == first
    # Something else went out on one subject since (a cleanup, say): that patch is sent again.
    seq, view_seq, payload = evaluator._published[first[0]]
    evaluator._published[first[0]] = (seq + 1000, view_seq, payload)
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    assert _sent_alone(js) == [*first, first[0]]
    # Long enough after: every one is sent again.
    monkeypatch.setattr(service, "OVERFLOW_RESEND_SECONDS", 0.0)
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    assert _sent_alone(js) == [*first, first[0], *first]


def test_a_result_carries_more_certificates_for_the_notifier_than_the_status_lists_only_with_targets() -> (
    None
):
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(status_cap=10), test_subjects.partition("ns"))  # type: ignore[arg-type]
    notified = NotificationSpec(targets=[NotificationTarget(name="hook", channels={"webhook": {"url": "x"}})])
    for seq, (name, notification) in enumerate([("told", notified), ("quiet", None)], start=1):
        evaluator.view.apply(seq, certcheck(name, seq, "x", notification))
    for seq in range(3, 18):  # 15 Secrets expiring within the threshold
        evaluator.view.apply(seq, tls_secret(f"s{seq:02d}", seq, "x"))
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "told"), ("ns", "quiet")}), "change"))
    told, quiet = js.results()["told"], js.results()["quiet"]
    assert len(told.status.certificates) == len(quiet.status.certificates) == 10
    assert told.notable is not None and len(told.notable) == 15
    assert told.notable[:10] == told.status.certificates
    assert quiet.notable is None


def _echo(secret: SecretObserved, result: EvaluationResult, seq: int) -> SecretObserved:
    """The Secret once the recorder wrote the result's patch on it, as the watcher sees it back."""
    patch = next(p for p in result.annotation_patches if p.name == secret.name)
    written = {k: v for k, v in patch.annotations.items() if v is not None}
    return msgspec.structs.replace(secret, annotations=written, resource_version=str(seq))


@pytest.mark.parametrize("echoes", [10, service.REFRESH_AFTER_CHANGES])
def test_a_certcheck_many_of_whose_annotations_came_back_is_evaluated_when_the_consumer_is_idle(
    echoes: int,
) -> None:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    evaluator.view.apply(1, certcheck("big", 1, "big"))
    secrets = [tls_secret(f"s{i}", 2 + i, "big") for i in range(echoes)]
    for i, secret in enumerate(secrets):
        evaluator.view.apply(2 + i, secret)
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    first = js.results()["big"]
    assert len(first.annotation_patches) == echoes
    seq = 10_000
    for secret in secrets:
        seq += 1
        effects = evaluator.view.apply(seq, _echo(secret, first, seq))
        assert not effects.evaluate  # certcheck's own write coming back calls for no evaluation...
        evaluator._note_echoes(effects.annotated)
    published = len(js.published)
    asyncio.run(evaluator.refresh_echoed())
    if echoes < service.REFRESH_AFTER_CHANGES:
        assert len(js.published) == published  # ...a few are left to the next change
        assert evaluator.view.pending_changes(("ns", "big")) == echoes
    else:
        assert js.results()["big"].annotation_patches == []  # ...many are taken in while idle
        assert evaluator.view.pending_changes(("ns", "big")) == 0


def test_the_next_evaluation_starts_from_the_result_as_built_equal_to_what_was_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    evaluator.view.apply(1, certcheck("big", 1, "big"))
    secrets = [tls_secret(f"s{i}", 2 + i, "big") for i in range(20)]
    for i, secret in enumerate(secrets):
        evaluator.view.apply(2 + i, secret)
    decoded: list[bytes] = []
    as_last = service._as_last

    def counted(seq: int, view_seq: int, data: bytes) -> service.LastResult:
        decoded.append(data)
        return as_last(seq, view_seq, data)

    monkeypatch.setattr(service, "_as_last", counted)
    subject = subjects.result_subject("ns", "big")
    seq = 30
    for round_ in range(3):
        asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
        told = asyncio.run(evaluator._last_result(subject))
        assert told == as_last(*evaluator._published[subject])  # the same as decoding what went out
        assert told.result is not None and told.result.annotation_patches  # some Secrets still to annotate
        for secret in secrets[round_ * 5 : round_ * 5 + 5]:  # some annotations come back
            seq += 1
            evaluator.view.apply(seq, _echo(secret, told.result, seq))
    assert decoded == []


def test_clean_ups_expire_from_the_results_stream_and_results_do_not() -> None:
    js = FakeJetStream()
    evaluator = _big_certcheck(js)
    annotated = {"certcheck.dev/state": "Valid"}  # by certcheck, and no CertCheck covers it now
    evaluator.view.apply(
        200, msgspec.structs.replace(tls_secret("loose", 200, "nobody"), annotations=annotated)
    )
    effects = Effects(evaluate={("ns", "big")}, released={("ns", "loose")})
    asyncio.run(evaluator.act(effects, "change"))
    ttl = {subject: headers.get(HDR_MSG_TTL) for subject, _, headers in js.published}
    cleanups = {s: t for s, t in ttl.items() if s.startswith(subjects.cleanup_subject("ns", ""))}
    assert subjects.cleanup_subject("ns", "loose") in cleanups  # the released Secret's
    assert len(cleanups) > 1  # and the patches that did not fit
    assert set(cleanups.values()) == {str(service.CLEANUP_TTL_SECONDS)}
    assert ttl[subjects.result_subject("ns", "big")] is None


@pytest.mark.parametrize("max_payload", [45_000, 1 << 20])  # the patches do not all fit / all fit
def test_a_result_of_many_patches_is_encoded_as_a_whole_encoding_of_what_it_carries(max_payload: int) -> None:
    js = FakeJetStream()
    evaluator = _big_certcheck(js)
    evaluator.bus.nc.max_payload = service.RESULT_HEADROOM_BYTES + max_payload  # type: ignore[attr-defined]
    asyncio.run(evaluator.act(Effects(evaluate={("ns", "big")}), "change"))
    [(_, payload, _)] = [p for p in js.published if p[0] == subjects.result_subject("ns", "big")]
    result = result_decoder.decode(payload)
    assert isinstance(result, EvaluationResult)
    assert len(result.annotation_patches) > service.FIT_WHOLE_UP_TO or max_payload < (1 << 20)
    assert payload == encoder.encode(result)  # byte for byte what encoding it whole gives
    told = asyncio.run(evaluator._last_result(subjects.result_subject("ns", "big")))
    assert told.result == result
    assert len(payload) <= max_payload


def test_patches_whose_values_hold_newlines_and_any_text_are_fitted_intact() -> None:
    evaluator = _big_certcheck(FakeJetStream())
    odd = ["line one\nline two", "\u2028\u0000\"'\\", "ü" * 50, ""]
    patches = [
        AnnotationPatch("ns", f"s{i}", f"uid-{i}", {"certcheck.dev/problems": odd[i % len(odd)]}, str(i))
        for i in range(service.FIT_WHOLE_UP_TO * 2)
    ]
    result = EvaluationResult(
        namespace="ns",
        name="big",
        uid="uid-big",
        generation=1,
        evaluated_at="2026-12-07T00:00:00Z",
        view_seq=1,
        status=CertCheckStatus(),
        status_changed=False,
        annotation_patches=patches,
    )
    fitted, payload = asyncio.run(evaluator._fit(result))
    assert fitted == result
    assert result_decoder.decode(payload) == result


# --- the changes the view applies ------------------------------------------------------------------


def applied(evaluator: Evaluator, *messages: Any) -> None:
    """Fold messages into the evaluator's view as its follower does, handing on what each asks for."""
    for message in messages:
        seq = evaluator.view.seq + 1
        evaluator._applied(seq, evaluator.view.apply(seq, message))


async def worked(evaluator: Evaluator, until: Any, timeout: float = 5.0) -> None:
    """Run the evaluator's work on changes until ``until()`` holds and nothing waits any more."""
    evaluator.follower.behind = 0  # caught up
    task = asyncio.create_task(evaluator.work_objects())
    try:
        async with asyncio.timeout(timeout):
            while not until() or evaluator.changes_waiting:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()


def results_published(js: FakeJetStream, name: str) -> int:
    return sum(1 for subject, _, _ in js.published if subject == subjects.result_subject("ns", name))


def test_the_changes_the_view_applied_meanwhile_are_evaluated_together_each_certcheck_once() -> None:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    applied(evaluator, certcheck("alpha", 1, "alpha"), tls_secret("alpha-tls", 2, "alpha"))
    applied(evaluator, certcheck("gamma", 3, "gamma"), tls_secret("gamma-tls", 4, "gamma"))
    assert evaluator.changes_waiting
    asyncio.run(worked(evaluator, lambda: len(js.results()) == 2))
    assert (results_published(js, "alpha"), results_published(js, "gamma")) == (1, 1)
    assert js.results()["alpha"].status.target_certs_count == 1  # from the view as the changes left it


def test_changes_whose_publishing_failed_are_kept_and_acted_on_again() -> None:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    js.fail_subjects.add(subjects.result_subject("ns", "alpha"))
    applied(evaluator, certcheck("alpha", 1, "alpha"), tls_secret("alpha-tls", 2, "alpha"))

    async def failing_then_back() -> None:
        evaluator.follower.behind = 0
        task = asyncio.create_task(evaluator.work_objects())
        await asyncio.sleep(0.2)
        assert results_published(js, "alpha") == 0 and evaluator.changes_waiting  # kept, not dropped
        js.fail_subjects.clear()
        task.cancel()
        await worked(evaluator, lambda: results_published(js, "alpha") == 1)

    asyncio.run(failing_then_back())


def test_a_start_up_sweep_takes_over_what_was_applied_before_it_but_for_removals() -> None:
    js = FakeJetStream()
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    applied(evaluator, certcheck("alpha", 1, "alpha"), tls_secret("alpha-tls", 2, "alpha"))
    applied(evaluator, certcheck("gone", 3, "gone"))
    evaluator.view.apply(4, ObjectDeleted(subjects.KIND_CERTCHECK, "ns", "gone", "uid-gone", "4"))
    evaluator._applied(4, Effects(removed=[("ns", "gone", "uid-gone")]))
    asyncio.run(evaluator.sweep("start"))
    assert results_published(js, "alpha") == 1
    asyncio.run(worked(evaluator, lambda: results_published(js, "gone") == 1))
    assert results_published(js, "alpha") == 1  # not evaluated a second time for the catch-up's changes


def test_a_removal_already_on_its_subject_is_not_published_again_after_a_restart() -> None:
    """A view reading the stream again applies every deletion still in it: the removal its predecessor
    published is not published again (nor told again)."""
    js = FakeJetStream()
    bus = Bus(nc=FakeNats(), js=js)  # type: ignore[arg-type]
    removal = Effects(removed=[("ns", "alpha", "uid-alpha")])
    first = Evaluator(bus, Settings(), test_subjects.partition("ns"))
    asyncio.run(first.act(removal, "change"))
    restarted = Evaluator(bus, Settings(), test_subjects.partition("ns"))
    restarted.view.seq = 7
    asyncio.run(restarted.act(removal, "change"))
    assert results_published(js, "alpha") == 1
    other_uid = Effects(removed=[("ns", "alpha", "uid-alpha-2")])  # a CertCheck of the same name, since
    asyncio.run(restarted.act(other_uid, "change"))
    assert results_published(js, "alpha") == 2


def test_an_object_message_the_view_cannot_apply_is_dead_lettered_once_across_restarts() -> None:
    js = FakeJetStream()
    bus = Bus(nc=FakeNats(), js=js)  # type: ignore[arg-type]
    subject = test_subjects.object_subject(subjects.KIND_SECRET, "ns", "garbage")
    garbage = SimpleNamespace(
        subject=subject, data=b"\xff not json", metadata=SimpleNamespace(sequence=SimpleNamespace(stream=42))
    )
    for _ in range(2):  # the holder, then its successor reading the stream again
        evaluator = Evaluator(bus, Settings(), test_subjects.partition("ns"))
        evaluator._refused(garbage, "undecodable object message: not json")  # type: ignore[arg-type]
        asyncio.run(worked(evaluator, lambda: True))
    parked = [(s, h) for s, _, h in js.published if s == subjects.deadletter_subject(subject)]
    assert len(parked) == 1
    assert parked[0][1][HDR_DEAD_STREAM_SEQ] == "42"
    assert parked[0][1][HDR_DEAD_REASON].startswith("undecodable object message")


def test_a_dead_letter_that_could_not_be_published_is_tried_again_with_no_further_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "backoff", lambda failures, cap: 0.01)
    js = FakeJetStream()
    subject = test_subjects.object_subject(subjects.KIND_SECRET, "ns", "garbage")
    js.fail_subjects.add(subjects.deadletter_subject(subject))
    evaluator = Evaluator(Bus(nc=FakeNats(), js=js), Settings(), test_subjects.partition("ns"))  # type: ignore[arg-type]
    garbage = SimpleNamespace(
        subject=subject, data=b"\xff not json", metadata=SimpleNamespace(sequence=SimpleNamespace(stream=42))
    )
    evaluator._refused(garbage, "undecodable object message: not json")  # type: ignore[arg-type]

    def parked() -> int:
        return sum(1 for s, _, _ in js.published if s == subjects.deadletter_subject(subject))

    async def bus_back_later() -> None:
        task = asyncio.create_task(worked(evaluator, lambda: parked() == 1))
        await asyncio.sleep(0.1)  # several attempts fail meanwhile
        assert parked() == 0
        js.fail_subjects.clear()
        await task

    asyncio.run(bus_back_later())
    assert parked() == 1


# --- a status that is not what was told -------------------------------------------------------------


def with_status(observed: CertCheckObserved, status: CertCheckStatus) -> CertCheckObserved:
    return msgspec.structs.replace(observed, status=msgspec.Raw(encoder.encode(status)))


async def recorder_applied(js: FakeJetStream, name: str, status_version: str = "") -> None:
    """The recorder's mark: the result now on the CertCheck's subject was applied (its status write
    making ``status_version``)."""
    subject = subjects.result_subject("ns", name)
    marks = await js.key_value(RECORDER_APPLIED_BUCKET)
    await marks.put(subjects.applied_mark(subject), AppliedMark(js.last[subject][0], status_version).encode())


def checking_evaluator() -> tuple[Evaluator, FakeJetStream]:
    js = FakeJetStream()
    settings = Settings(status_check_seconds=0.05)
    return Evaluator(Bus(nc=FakeNats(), js=js), settings, test_subjects.partition("ns")), js  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def working(evaluator: Evaluator) -> AsyncIterator[None]:
    """CertCheck alpha and its Secret applied, and the evaluator working on changes meanwhile."""
    applied(evaluator, certcheck("alpha", 1, "alpha"), tls_secret("alpha-tls", 2, "alpha"))
    evaluator.follower.behind = 0
    task = asyncio.create_task(evaluator.work_objects())
    try:
        yield
    finally:
        task.cancel()


def test_a_status_set_back_after_it_was_written_is_written_again_once_the_recorder_applied_its_result() -> (
    None
):
    evaluator, js = checking_evaluator()

    async def run() -> None:
        applied(evaluator, certcheck("alpha", 1, "alpha"), tls_secret("alpha-tls", 2, "alpha"))
        await worked(evaluator, lambda: results_published(js, "alpha") == 1)
        told = js.results()["alpha"]
        assert told.status_changed and told.status.expiring_soon_count == 1
        await recorder_applied(js, "alpha")
        applied(evaluator, with_status(certcheck("alpha", 3, "alpha"), told.status))  # the write, back
        await asyncio.sleep(0.2)
        assert results_published(js, "alpha") == 1  # as told: nothing to do
        # A late write of an older result (or an edit by hand) sets it back.
        applied(evaluator, with_status(certcheck("alpha", 4, "alpha"), CertCheckStatus()))
        await worked(evaluator, lambda: results_published(js, "alpha") == 2, timeout=2)
        again = js.results()["alpha"]
        assert again.status_changed and again.resource_version == "4"
        assert again.status.expiring_soon_count == 1 and again.status.certificates == told.status.certificates

    asyncio.run(run())
    assert service.statuses_put_back._value.get() >= 1


def test_a_status_not_yet_as_told_is_left_to_the_recorder_until_it_applied_that_result() -> None:
    evaluator, js = checking_evaluator()

    async def run() -> None:
        async with working(evaluator):
            await eventually(lambda: results_published(js, "alpha") == 1)
            await asyncio.sleep(0.3)  # several checks: the recorder has not applied it (no mark)
            assert results_published(js, "alpha") == 1
            await recorder_applied(js, "alpha")  # applied, yet the status never came back as told
            await eventually(lambda: results_published(js, "alpha") == 2, timeout=3)
            applied(evaluator, with_status(certcheck("alpha", 3, "alpha"), js.results()["alpha"].status))
            await asyncio.sleep(0.3)
            assert results_published(js, "alpha") == 2  # back as told: no more checks

    asyncio.run(run())


def test_a_status_whose_write_the_view_has_not_seen_yet_is_waited_for_not_written_again() -> None:
    evaluator, js = checking_evaluator()

    async def run() -> None:
        async with working(evaluator):
            await eventually(lambda: results_published(js, "alpha") == 1)
            await recorder_applied(js, "alpha", status_version="9")  # the view holds version 1
            await asyncio.sleep(0.3)  # several checks: the write's echo is late, not lost
            assert results_published(js, "alpha") == 1
            # Version 9 comes back set back (someone wrote over it in between): written again.
            applied(evaluator, with_status(certcheck("alpha", 10, "alpha"), CertCheckStatus()))
            await eventually(lambda: results_published(js, "alpha") == 2, timeout=3)

    asyncio.run(run())


async def eventually(until: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not until():
            await asyncio.sleep(0.01)
