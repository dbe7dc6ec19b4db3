"""Reminders (``remindAt``): a notification target is reminded once at each mark before a certificate's
notAfter, at that moment (the evaluator schedules it), again for the certificate that replaces it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.messages import (
    CertificateNotice,
    CertificateStatus,
    ExpiryNotification,
    NotificationSpec,
    NotificationTarget,
    State,
)
from services.domain.certs import CertFacts
from services.domain.model import CertCheckSpec, CertEntry, Coverage, SecretView
from services.domain.reminders import due_reminders, next_reminder, reminder_offsets
from services.domain.times import rfc3339
from services.evaluator import core
from services.notifier import core as notifier
from services.notifier.channels.alertmanager import alerts
from services.notifier.channels.pagerduty import events

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)
DAY = timedelta(days=1)


def test_the_marks_of_every_target_and_the_next_moment_one_is_passed() -> None:
    spec = NotificationSpec(
        [
            NotificationTarget("a", remind_at=["30d", "7d"]),
            NotificationTarget("b", remind_at=["7d", "1d", "soon"]),
        ]
    )
    assert reminder_offsets(spec) == (30 * DAY, 7 * DAY, DAY)  # an unreadable mark is skipped
    assert reminder_offsets(None) == ()
    not_afters = [NOW + 10 * DAY, NOW + 40 * DAY]
    assert next_reminder(not_afters, (30 * DAY, 7 * DAY), NOW) == NOW + 3 * DAY  # the first: 10d - 7d
    assert next_reminder(not_afters, (), NOW) is None
    assert due_reminders(NOW + 10 * DAY, ["30d", "7d", "bad"], NOW) == {"30d"}
    assert due_reminders(NOW - DAY, ["30d"], NOW) == frozenset()  # expired: told as Expired, not reminded


def test_an_evaluation_is_due_at_the_next_reminder_before_the_next_state_change() -> None:
    facts = CertFacts(NOW - DAY, NOW + 20 * DAY + timedelta(microseconds=5), "web", "ca", "1", "f")
    secret = SecretView("ns", "web", "u", {}, {}, (CertEntry("tls.crt", 0, facts),))
    spec = CertCheckSpec("ns", "c", "uc", 1, 7)
    evaluate = core.evaluate  # threshold 7: ExpiringSoon 13 days from now
    plain = evaluate(spec, [secret], {"web": Coverage(("c",), 7)}, None, NOW)
    assert plain.next_due == NOW + 13 * DAY + timedelta(seconds=1)
    reminded = evaluate(spec, [secret], {"web": Coverage(("c",), 7)}, None, NOW, reminders=(14 * DAY,))
    assert reminded.next_due == NOW + 6 * DAY + timedelta(seconds=1)  # rounded up to the second


def entry(state: State, not_after: datetime) -> CertificateStatus:
    return CertificateStatus("web", "tls.crt", 0, state, True, not_after=rfc3339(not_after))


def test_a_target_is_reminded_once_per_mark_whatever_the_state_and_again_after_a_renewal() -> None:
    target = NotificationTarget("t", remind_at=["30d", "7d"])
    not_after = NOW + 20 * DAY
    notices, seen = notifier.plan(target, [entry(State.VALID, not_after)], {}, NOW)
    assert [(n.change, n.state) for n in notices] == [("reminder", "Valid")]
    assert seen["web/tls.crt[0]"].reminded == ["30d"]
    again, seen = notifier.plan(target, [entry(State.VALID, not_after)], seen, NOW + DAY)
    assert again == []  # told once
    later, seen = notifier.plan(target, [entry(State.VALID, not_after)], seen, NOW + 13 * DAY)
    assert [n.change for n in later] == ["reminder"] and seen["web/tls.crt[0]"].reminded == ["30d", "7d"]
    renewed = NOW + 25 * DAY  # a new certificate: its marks are its own
    fresh, _ = notifier.plan(target, [entry(State.VALID, renewed)], seen, NOW + 13 * DAY)
    assert [n.change for n in fresh] == ["reminder"]


def test_a_state_change_at_a_mark_tells_it_in_the_same_notice() -> None:
    target = NotificationTarget("t", remind_at=["30d"])
    notices, seen = notifier.plan(target, [entry(State.EXPIRING_SOON, NOW + 20 * DAY)], {}, NOW)
    assert [n.change for n in notices] == ["firing"]
    assert notifier.plan(target, [entry(State.EXPIRING_SOON, NOW + 20 * DAY)], seen, NOW + DAY)[0] == []


def test_alerting_channels_leave_out_reminders_of_valid_certificates() -> None:
    valid = CertificateNotice("web", "tls.crt", 0, "Valid", "reminder", not_after=rfc3339(NOW + 20 * DAY))
    soon = CertificateNotice("api", "tls.crt", 0, "ExpiringSoon", "reminder")
    notification = ExpiryNotification("d", "shop", "c", "t", 30, [valid, soon])
    assert [a["labels"]["secret"] for a in alerts(notification, {}, NOW, DAY)] == ["api"]  # type: ignore[index]
    assert len(events(notification)) == 1
