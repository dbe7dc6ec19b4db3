"""Notifier.process against an in-memory KV bucket and recording channels (no NATS, no HTTP): replicas
racing for the same result send once, a replica that loses the compare-and-set plans again and sends
nothing twice, a failed send is retried as the same delivery, and giving up is reported once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from schemas.messages import (
    CertCheckStatus,
    CertificateStatus,
    EvaluationResult,
    NotificationFailure,
    NotificationSpec,
    NotificationTarget,
    SecretKeyRef,
    State,
)
from services.common.settings import Settings
from services.notifier import core
from services.notifier.channels import DeliveryError, Registry
from services.notifier.service import Notifier, state_decoder
from tests.fakes import FakeKeyValue, FakeSecretReader, RecordingChannel, RecordingWriter

SIGNING = SecretKeyRef("alerting", "signing")
HOOK = NotificationTarget(
    "hook",
    channels={
        "webhook": {
            "url": "http://hook.invalid/certcheck",
            "signingSecretRef": {"name": "alerting", "key": "signing"},
        }
    },
)
KEY = "shop.web"


def result(*targets: NotificationTarget) -> EvaluationResult:
    expiring = CertificateStatus("web-tls", "tls.crt", 0, State.EXPIRING_SOON, active=True)
    return EvaluationResult(
        namespace="shop",
        name="web",
        uid="uid-1",
        generation=1,
        evaluated_at="2026-06-01T00:00:00Z",
        view_seq=1,
        status=CertCheckStatus(certificates=[expiring]),
        status_changed=True,
        notification=NotificationSpec(targets=list(targets or [HOOK])),
        threshold_days=30,
    )


def replica(
    kv: FakeKeyValue,
    channel: RecordingChannel,
    instance: str = "notifier-a",
    writer: RecordingWriter | None = None,
    max_attempts: int = 6,
) -> Notifier:
    secrets = FakeSecretReader()
    secrets.holds(SIGNING, b"whsec")
    settings = Settings(instance_id=instance, notify_max_attempts=max_attempts)
    return Notifier(
        SimpleNamespace(),  # type: ignore[arg-type]  # the bus: only the consume loop uses it
        kv,  # type: ignore[arg-type]
        secrets,  # type: ignore[arg-type]
        writer or RecordingWriter(),  # type: ignore[arg-type]
        settings,
        Registry({channel.field: channel}),  # type: ignore[dict-item]
    )


def stored(kv: FakeKeyValue) -> core.NotifyState:
    return state_decoder.decode(kv.entries[KEY].value)


def test_two_replicas_processing_the_same_result_at_once_send_it_once() -> None:
    kv, channel = FakeKeyValue(), RecordingChannel()
    first, second = replica(kv, channel, "notifier-a"), replica(kv, channel, "notifier-b")
    evaluated = result()

    async def both() -> None:
        await asyncio.gather(first.process(evaluated), second.process(evaluated))

    asyncio.run(both())
    assert len(channel.sent) == 1
    assert kv.conflicts >= 1  # they did race: one lost a compare-and-set
    assert stored(kv).targets["hook"].pending is None  # the delivery is not left to be sent again
    asyncio.run(first.process(evaluated))  # redeliveries to either replica
    asyncio.run(second.process(evaluated))
    assert len(channel.sent) == 1


def test_a_lost_compare_and_set_plans_again_and_sends_nothing_twice() -> None:
    kv = FakeKeyValue()
    late_channel, quick_channel = RecordingChannel(), RecordingChannel()
    late, quick = replica(kv, late_channel, "notifier-a"), replica(kv, quick_channel, "notifier-b")
    evaluated = result()
    kv.before_write = lambda: quick.process(evaluated)  # the other replica notifies while `late` plans

    assert asyncio.run(late.process(evaluated)) is None
    assert kv.conflicts == 1
    assert len(quick_channel.sent) == 1 and late_channel.sent == []
    assert stored(kv).targets["hook"].pending is None


def test_a_failing_send_is_retried_as_the_same_delivery() -> None:
    kv, channel = FakeKeyValue(), RecordingChannel(DeliveryError("hook answered HTTP 503", True, 5.0))
    notifier = replica(kv, channel)
    evaluated = result()

    assert asyncio.run(notifier.process(evaluated)) == 5.0  # Retry-After, above the first back-off
    pending = stored(kv).targets["hook"].pending
    assert pending is not None and pending.attempts == 1
    assert asyncio.run(notifier.process(evaluated)) is None  # the redelivery
    assert channel.delivery_ids == [pending.delivery_id] * 2
    assert channel.sent[0].notification == channel.sent[1].notification == pending.notification
    assert channel.sent[1].credentials.value(SIGNING) == b"whsec"
    assert stored(kv).targets["hook"].pending is None


def test_giving_up_reports_notification_failed_once() -> None:
    unavailable = DeliveryError("hook answered HTTP 503", True)
    kv, channel, writer = FakeKeyValue(), RecordingChannel(unavailable, unavailable), RecordingWriter()
    notifier = replica(kv, channel, writer=writer, max_attempts=2)
    evaluated = result()

    assert asyncio.run(notifier.process(evaluated)) == 0.5  # the first back-off
    assert writer.events == [] and writer.failures == []
    assert asyncio.run(notifier.process(evaluated)) is None  # the last attempt: given up
    assert asyncio.run(notifier.process(evaluated)) is None  # the same result once more

    assert len(channel.sent) == 2
    [event] = writer.events
    assert (event.reason, event.type) == ("NotificationFailed", "Warning")
    assert event.message == "notification target hook: hook answered HTTP 503 (after 2 attempts)"
    [failures] = writer.failures
    reason = "hook answered HTTP 503 (after 2 attempts)"
    assert failures == [NotificationFailure("hook", reason, failures[0].since)] and failures[0].since
    assert stored(kv).reported == failures


def test_a_target_that_selects_no_channel_is_given_up_at_once() -> None:
    kv, channel, writer = FakeKeyValue(), RecordingChannel(), RecordingWriter()
    nowhere = NotificationTarget("nowhere")
    assert asyncio.run(replica(kv, channel, writer=writer).process(result(nowhere))) is None
    assert channel.sent == []
    assert [f.reason for f in writer.failures[-1]] == [
        "target names no channel (one of webhook) (after 1 attempts)"
    ]


def test_another_replicas_live_claim_is_left_to_it() -> None:
    kv, channel = FakeKeyValue(), RecordingChannel(DeliveryError("busy", True, 30.0))
    evaluated = result()
    assert asyncio.run(replica(kv, channel, "notifier-a").process(evaluated)) == 30.0  # a's claim stays

    assert asyncio.run(replica(kv, channel, "notifier-b").process(evaluated)) == 2.0  # look again soon
    assert len(channel.sent) == 1
