"""A Secret's Events come from its state transition: the state its annotations record (with what the
evaluation before told) to the state its certificates are rated in now; never from the annotation diff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from schemas import annotations as ann
from schemas.messages import AnnotationPatch, EventIntent
from services.domain import model
from services.domain.certs import CertFacts
from services.domain.events import dedup_key
from services.domain.times import rfc3339
from services.evaluator import annotations, core, events, rating
from services.evaluator.rating import SecretState

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
SPEC = model.CertCheckSpec("ns", "check", "uid-check", 1, 30, resource_version="40")
COVERAGE = model.Coverage(("check",), 30)
SOON = NOW + timedelta(days=5)
LATER = NOW + timedelta(days=300)
ISSUED = NOW - timedelta(days=30)


def facts(not_after: datetime, fingerprint: str = "f1") -> CertFacts:
    return CertFacts(ISSUED, not_after, "cn", "ca", "1", fingerprint)


def secret(
    not_after: datetime,
    annotations: dict[str, str] | None = None,
    edited: tuple[str, ...] = (),
    fingerprint: str = "f1",
) -> model.SecretView:
    return model.SecretView(
        "ns",
        "s",
        "uid-s",
        {},
        annotations or {},
        (model.CertEntry("tls.crt", 0, facts(not_after, fingerprint)),),
        resource_version="7",
        edited_annotations=edited,
    )


def recorded(state: str, not_after: datetime) -> dict[str, str]:
    """Annotations as certcheck writes them for this state."""
    return {
        ann.STATE: state,
        ann.NOT_AFTER: rfc3339(not_after),
        ann.NOT_BEFORE: rfc3339(ISSUED),
        ann.CHECKED_BY: "check",
    }


def outcomes_of(view: model.SecretView) -> list[annotations.SecretOutcome]:
    return annotations.secret_outcomes(SPEC, [view], {}, rating.rate_certificates(SPEC, [view], NOW), NOW)


def described(found: list[EventIntent]) -> list[tuple[str, str, str, str, str]]:
    return [(e.type, e.reason, e.message, e.dedup_key, e.occurrence) for e in found]


def secret_events_of(evaluation: core.Evaluation) -> list[tuple[str, str, str, str, str]]:
    return described([e for e in evaluation.events if e.involved_kind == "Secret"])


class TestTransition:
    def test_the_event_names_the_transition_from_the_recorded_to_the_rated_state(self) -> None:
        change = events.SecretTransition(
            "ns",
            "s",
            "uid-s",
            before=SecretState("Valid", rfc3339(SOON)),
            after=SecretState("ExpiringSoon", rfc3339(SOON)),
            threshold_days=30,
            certchecks=("check",),
        )
        event = events.secret_event(change)
        assert event is not None
        assert (event.type, event.reason, event.involved_kind) == ("Warning", "ExpiringSoon", "Secret")
        assert event.occurrence == f"Valid@{rfc3339(SOON)}>ExpiringSoon"
        assert event.dedup_key == dedup_key("uid-s", "ExpiringSoon", rfc3339(SOON))

    def test_the_rated_state_is_that_of_the_most_urgent_certificate(self) -> None:
        view = model.SecretView(
            "ns",
            "s",
            "uid-s",
            {},
            {},
            (model.CertEntry("tls.crt", 0, facts(LATER)), model.CertEntry("tls.crt", 1, facts(SOON))),
        )
        [outcome] = outcomes_of(view)
        assert outcome.state == SecretState("ExpiringSoon", rfc3339(SOON))

    def test_the_recorded_not_after_is_read_as_a_moment_not_as_text(self) -> None:
        offset = {ann.STATE: "Valid", ann.NOT_AFTER: SOON.replace(microsecond=0).isoformat()}
        assert "+00:00" in offset[ann.NOT_AFTER]
        assert annotations.recorded_state(offset) == SecretState("Valid", rfc3339(SOON))
        unreadable = {ann.STATE: "Valid", ann.NOT_AFTER: "soon"}
        assert annotations.recorded_state(unreadable) == SecretState("Valid", "soon")
        assert annotations.recorded_state({}) == SecretState(None, None)


class TestWhatCertcheckWritesDoesNotChooseTheEvents:
    def test_the_secret_event_step_gives_the_same_events_whatever_patch_it_is_handed(self) -> None:
        [outcome] = outcomes_of(secret(SOON, recorded("Valid", SOON)))
        assert outcome.patch is not None
        reformatted = AnnotationPatch(
            "ns",
            "s",
            "uid-s",
            {ann.STATE: "ExpiringSoon", ann.NOT_AFTER: SOON.isoformat(), "certcheck.dev/checked-at": "now"},
        )
        variants = [outcome, *(msgspec.structs.replace(outcome, patch=p) for p in (None, reformatted))]
        found = [described(events.secret_events([v])) for v in variants]
        assert found[0] == found[1] == found[2]
        assert [(kind, reason) for kind, reason, *_ in found[0]] == [("Warning", "ExpiringSoon")]

    def test_annotations_that_changed_but_not_in_state_give_a_patch_and_no_event(self) -> None:
        unrelated = {
            **recorded("ExpiringSoon", SOON),
            ann.CHECKED_BY: "someone-else",
            "certcheck.dev/legacy": "x",
        }
        del unrelated[ann.NOT_BEFORE]
        evaluation = core.evaluate(SPEC, [secret(SOON, unrelated)], {}, None, NOW)
        [patch] = evaluation.annotation_patches
        assert set(patch.annotations) == {ann.CHECKED_BY, ann.NOT_BEFORE}
        assert secret_events_of(evaluation) == []

    def test_writing_the_annotations_in_another_format_fires_the_same_events(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def run() -> list[list[tuple[str, str, str, str, str]]]:
            """Expiring, written back, then renewed: the Secret Events of each evaluation."""
            first = core.evaluate(SPEC, [secret(SOON)], {}, None, NOW)
            written = {k: v for k, v in first.annotation_patches[0].annotations.items() if v is not None}
            steady = core.evaluate(SPEC, [secret(SOON, written)], {}, first.status, NOW)
            renewed = core.evaluate(SPEC, [secret(LATER, written, fingerprint="f2")], {}, first.status, NOW)
            return [secret_events_of(e) for e in (first, steady, renewed)]

        as_written_today = run()
        writer = annotations.desired_annotations

        def another_format(*args: object, **kwargs: object) -> dict[str, str | None]:
            desired = writer(*args, **kwargs)  # type: ignore[arg-type]
            not_after = desired[ann.NOT_AFTER]
            assert not_after is not None
            moment = datetime.fromisoformat(not_after)
            return {**desired, ann.NOT_AFTER: moment.isoformat(), "certcheck.dev/checked-at": "now"}

        monkeypatch.setattr(annotations, "desired_annotations", another_format)
        assert run() == as_written_today
        assert [[reason for _, reason, *_ in found] for found in as_written_today] == [
            ["ExpiringSoon"],
            [],
            ["Renewed"],
        ]


class TestKeptBehaviour:
    def test_a_hand_edited_state_is_put_back_without_an_event(self) -> None:
        edited = secret(SOON, recorded("Valid", SOON), edited=(ann.STATE,))
        evaluation = core.evaluate(SPEC, [edited], {}, None, NOW)
        [patch] = evaluation.annotation_patches
        assert patch.annotations == {ann.STATE: "ExpiringSoon"}
        assert secret_events_of(evaluation) == []

    def test_what_the_evaluation_before_told_is_the_record_until_it_is_watched_back(self) -> None:
        told = AnnotationPatch("ns", "s", "uid-s", {ann.STATE: "ExpiringSoon"})
        # The annotations still say Valid: the told ExpiringSoon is what the Secret's record will say.
        view = secret(LATER, recorded("Valid", SOON), fingerprint="f2")
        [outcome] = outcomes_of(view)
        [renewed] = events.secret_events([outcome], [told])
        assert (renewed.reason, renewed.occurrence) == ("Renewed", f"ExpiringSoon@{rfc3339(SOON)}>Valid")

    def test_a_told_state_the_secret_left_again_gives_its_event_though_no_patch_is_due(self) -> None:
        # Told ExpiringSoon, not written yet; now the Secret is Valid again under a shorter threshold,
        # which its annotations say already: the transition from the told state still has its Event.
        relaxed = model.CertCheckSpec("ns", "check", "uid-check", 2, 3)
        view = secret(SOON, recorded("Valid", SOON))
        told = AnnotationPatch("ns", "s", "uid-s", {ann.STATE: "ExpiringSoon"})
        evaluation = core.evaluate(relaxed, [view], {}, None, NOW, told_patches=[told])
        assert evaluation.annotation_patches == []
        assert [(kind, reason) for kind, reason, *_ in secret_events_of(evaluation)] == [
            ("Normal", "Recovered")
        ]
