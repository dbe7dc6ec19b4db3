"""Every service runs as its own NATS user (k8s/nats/auth.conf): what it must not do, it cannot."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import nats.errors
import pytest

from devcluster.stack import Stack
from schemas import subjects
from schemas.permissions import SUBSCRIBER_USER, inbox_prefix
from schemas.streams import (
    EVENTS,
    NOTIFIER_CONSUMER,
    OBJECTS,
    RECORDER_CONSUMER,
    RESULTS,
    TRIGGERS,
    evaluator_due_consumer,
)
from tests import subjects as test_subjects

FORBIDDEN_PUBLISH = [
    ("watcher", subjects.result_subject("ns", "c")),
    ("watcher", test_subjects.schedule_subject("ns", "c")),
    ("evaluator", test_subjects.object_subject(subjects.KIND_SECRET, "ns", "s")),
    ("recorder", subjects.result_subject("ns", "c")),
    ("notifier", test_subjects.object_subject(subjects.KIND_CERTCHECK, "ns", "c")),
    ("exporter", subjects.cleanup_subject("ns", "s")),
    ("recorder", "$JS.API.STREAM.DELETE.CERTCHECK_OBJECTS"),
    ("exporter", "$KV.certcheck_notifier.ns.c"),
    # Only the watcher creates and updates streams: a read-only exporter must not shrink one.
    *(
        (user, f"$JS.API.STREAM.{verb}.{stream.name}")
        for user in ("evaluator", "recorder", "notifier", "exporter")
        for verb in ("UPDATE", "CREATE", "DELETE", "PURGE")
        for stream in (OBJECTS, RESULTS)
    ),
    # No service may delete a consumer, its own or another's.
    *(
        (user, f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}")
        for user in ("watcher", "evaluator", "recorder", "notifier", "exporter")
        for stream, consumer in (
            (TRIGGERS.name, evaluator_due_consumer(0)),
            (RESULTS.name, RECORDER_CONSUMER),
            (RESULTS.name, NOTIFIER_CONSUMER),
        )
    ),
]


async def violations(stack: Stack, user: str, action: str, subject: str) -> list[str]:
    """Connect as ``user``, publish to or subscribe to ``subject``, and return what the server refused."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    users = stack.nats.users or {}
    nc = await nats.connect(
        stack.nats.address,
        user=user,
        password=users[user],
        inbox_prefix=inbox_prefix(user),
        error_cb=on_error,
        max_reconnect_attempts=0,
    )
    try:
        if action == "publish":
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    return errors


@pytest.mark.parametrize(("user", "subject"), FORBIDDEN_PUBLISH)
def test_a_service_publishing_outside_its_subjects_is_refused(stack: Stack, user: str, subject: str) -> None:
    refused = asyncio.run(violations(stack, user, "publish", subject))
    assert any("permissions violation for publish" in e.lower() for e in refused), refused


def test_a_service_cannot_read_another_services_replies(stack: Stack) -> None:
    refused = asyncio.run(violations(stack, "watcher", "subscribe", f"{inbox_prefix('notifier')}.>"))
    assert any("permissions violation for subscription" in e.lower() for e in refused), refused


@pytest.mark.parametrize("user", ["watcher", "evaluator", "recorder", "notifier"])
def test_every_service_that_gives_up_on_work_may_record_it_in_the_dead_letters(
    stack: Stack, user: str
) -> None:
    subject = subjects.deadletter_subject(f"permission-probe.{user}")

    async def delivered() -> tuple[list[str], int]:
        admin = await nats.connect(stack.nats.url)
        received: list[bytes] = []

        async def record(msg: Any) -> None:
            received.append(msg.data)

        await admin.subscribe(subject, cb=record)
        await admin.flush()
        try:
            refused = await violations(stack, user, "publish", subject)
            for _ in range(100):  # the publish must arrive: an allowed one does
                if received:
                    break
                await asyncio.sleep(0.02)
        finally:
            await admin.close()
        return refused, len(received)

    refused, received = asyncio.run(delivered())
    assert refused == [] and received == 1


def test_a_client_without_credentials_is_rejected(stack: Stack) -> None:
    async def anonymous() -> None:
        nc = await nats.connect(stack.nats.address, max_reconnect_attempts=0, allow_reconnect=False)
        await nc.close()

    with pytest.raises((nats.errors.Error, OSError)):
        asyncio.run(anonymous())


SUBSCRIBER_FORBIDDEN = [
    "certcheck.v1.events.default.ns.discovered.secret.s",  # forging an event
    f"$JS.API.CONSUMER.CREATE.{OBJECTS.name}",  # reading the observed objects
    f"$JS.API.CONSUMER.DURABLE.CREATE.{RESULTS.name}.mine",  # reading the results
    f"$JS.API.STREAM.UPDATE.{EVENTS.name}",
    f"$JS.API.STREAM.PURGE.{EVENTS.name}",
    f"$JS.API.STREAM.INFO.{OBJECTS.name}",
    "$KV.certcheck_notifier.ns.c",
]


@pytest.mark.parametrize("subject", SUBSCRIBER_FORBIDDEN)
def test_an_outside_subscriber_may_do_nothing_but_read_the_events(stack: Stack, subject: str) -> None:
    refused = asyncio.run(violations(stack, SUBSCRIBER_USER, "publish", subject))
    assert any("permissions violation for publish" in e.lower() for e in refused), refused


def test_an_outside_subscriber_reads_the_events_stream_through_a_durable_consumer_of_its_own(
    stack: Stack,
) -> None:
    subject = "certcheck.v1.events.default.perm-probe.discovered.secret.s"

    async def read() -> bytes:
        admin = await nats.connect(stack.nats.url)
        users = stack.nats.users or {}
        outside = await nats.connect(
            stack.nats.address,
            user=SUBSCRIBER_USER,
            password=users[SUBSCRIBER_USER],
            inbox_prefix=inbox_prefix(SUBSCRIBER_USER),
        )
        try:
            await admin.jetstream().publish(subject, b'{"probe": true}')
            sub = await outside.jetstream().pull_subscribe(subject, durable="perm-probe", stream=EVENTS.name)
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack()
            await outside.jetstream().delete_consumer(EVENTS.name, "perm-probe")
            return bytes(msg.data)
        finally:
            await outside.close()
            await admin.close()

    assert asyncio.run(read()) == b'{"probe": true}'
