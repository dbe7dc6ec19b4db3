"""Streams belong to one component: a service started with other settings never lowers a running
stream, it reports the difference; `certcheck admin streams --apply` is the one step that changes it.
A durable consumer deleted under a running service is created again and counted, never a silent stall."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import nats
from nats.js.api import StreamConfig
from prometheus_client import REGISTRY

from devcluster.certs import expiring_in
from devcluster.stack import REPO, Stack
from schemas.streams import (
    DEADLETTER,
    OBJECTS,
    RECORDER_CONSUMER,
    RESULTS,
    TRIGGERS,
    StreamSpec,
    evaluator_due_consumer,
)
from services.common import bus as bus_mod
from tests import subjects as test_subjects
from tests.conftest import Cluster, wait_for
from tests.e2e.helpers import metric


def mismatch(stream: str) -> float | None:
    return REGISTRY.get_sample_value("certcheck_stream_config_mismatch", {"stream": stream})


def test_a_client_with_lower_settings_never_downgrades_a_running_stream_and_reports_it(
    plain_nats_url: str,
) -> None:
    name = f"T{uuid.uuid4().hex[:8]}"
    spec = StreamSpec(name, (f"{name}.a.>",), "a test stream", max_age_seconds=3600)

    async def scenario() -> tuple[StreamConfig, StreamConfig]:
        bus = await bus_mod.connect(plain_nats_url, "stream-test")
        try:
            # An operator raised the limits of the running stream.
            await bus.js.add_stream(
                StreamConfig(name=name, subjects=[f"{name}.a.>"], description="a test stream", max_age=7200)
            )
            await bus_mod.ensure_streams(bus, (spec,))
            kept = (await bus.js.stream_info(name)).config
            # A newer release needs a subject and a feature more: added, the limit still kept.
            subjects = (f"{name}.a.>", f"{name}.b.>")
            newer = StreamSpec(name, subjects, "a test stream", max_age_seconds=3600, allow_msg_ttl=True)
            await bus_mod.ensure_streams(bus, (newer,))
            return kept, (await bus.js.stream_info(name)).config
        finally:
            await bus.close()

    kept, added = asyncio.run(scenario())
    assert kept.max_age == 7200
    assert added.max_age == 7200 and added.allow_msg_ttl
    assert sorted(added.subjects or []) == [f"{name}.a.>", f"{name}.b.>"]
    assert mismatch(name) == 1


def test_a_stream_as_wanted_is_not_reported(plain_nats_url: str) -> None:
    name = f"T{uuid.uuid4().hex[:8]}"
    spec = StreamSpec(name, (f"{name}.>",), "fresh", max_age_seconds=600)

    async def scenario() -> None:
        bus = await bus_mod.connect(plain_nats_url, "stream-test")
        try:
            await bus_mod.ensure_streams(bus, (spec,))  # creates it
            await bus_mod.ensure_streams(bus, (spec,))  # finds it as wanted
        finally:
            await bus.close()

    asyncio.run(scenario())
    assert mismatch(name) == 0


def admin_streams(stack: Stack, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "admin", "streams", *flags, "--nats-url", stack.nats.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_admin_command_shows_how_a_stream_differs_and_applies_it(stack: Stack) -> None:
    async def set_max_age(seconds: float) -> float:
        nc = await nats.connect(stack.nats.url)
        try:
            js = nc.jetstream()
            config = (await js.stream_info(DEADLETTER.name)).config
            config.max_age = seconds
            return float((await js.update_stream(config)).config.max_age or 0)
        finally:
            await nc.close()

    assert admin_streams(stack).returncode == 0, admin_streams(stack).stdout
    asyncio.run(set_max_age(14 * 24 * 3600))
    try:
        shown = admin_streams(stack)
        assert shown.returncode == 1
        assert f"{DEADLETTER.name}: max_age: 1209600.0 -> 604800.0" in shown.stdout
        applied = admin_streams(stack, "--apply")
        assert applied.returncode == 0 and f"{DEADLETTER.name}: updated" in applied.stdout
        assert admin_streams(stack).returncode == 0
    finally:
        asyncio.run(set_max_age(DEADLETTER.max_age_seconds or 0))


async def delete_consumer(stack: Stack, stream: str, consumer: str) -> None:
    nc = await nats.connect(stack.nats.url)  # the admin: no service may delete a consumer
    try:
        await nc.jetstream().delete_consumer(stream, consumer)
    finally:
        await nc.close()


def test_a_deleted_durable_consumer_is_created_again_counted_and_work_goes_on(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    before = metric(stack, "recorder", "certcheck_consumer_recreated_total")

    asyncio.run(delete_consumer(stack, RESULTS.name, RECORDER_CONSUMER))
    wait_for(
        lambda: metric(stack, "recorder", "certcheck_consumer_recreated_total") > before,
        timeout=30,
        what="the recorder's consumer created again",
    )
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "after", cert, key, labels={"app": "gone"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "gone"}})
    wait_for(
        lambda: (
            (cluster.core.read_namespaced_secret("after", namespace).metadata.annotations or {}).get(
                "certcheck.dev/state"
            )
            == "ExpiringSoon"
        ),
        timeout=30,
        what="a change recorded after the consumer came back",
    )


def test_the_evaluators_deleted_due_consumer_comes_back_and_a_full_evaluation_covers_what_fired_meanwhile(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    """The evaluator's due consumer takes new messages only: created again, it would start after a due
    time that fired while it was gone. A recreation is followed by a full sweep; changes meanwhile are
    evaluated as ever (the evaluator takes them from its view)."""
    before = metric(stack, "evaluator", "certcheck_consumer_recreated_total")
    consumer = evaluator_due_consumer(test_subjects.partition(namespace))

    asyncio.run(delete_consumer(stack, TRIGGERS.name, consumer))
    cert, key = expiring_in(10)  # made while the consumer is gone, or just after it came back
    cluster.create_tls_secret(namespace, "meanwhile", cert, key, labels={"app": "gone"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "gone"}})
    wait_for(
        lambda: metric(stack, "evaluator", "certcheck_consumer_recreated_total") > before,
        timeout=30,
        what="the evaluator's consumer created again",
    )
    wait_for(
        lambda: (
            (cluster.core.read_namespaced_secret("meanwhile", namespace).metadata.annotations or {}).get(
                "certcheck.dev/state"
            )
            == "ExpiringSoon"
        ),
        timeout=30,
        what="the change evaluated",
    )
    # The sweep evaluates every CertCheck of the partition (other tests' too): it may finish after the
    # change was evaluated on its own, and counts once it has.
    wait_for(
        lambda: metric(stack, "evaluator", "certcheck_sweeps_total", 'trigger="consumer-recreated"') >= 1,
        timeout=30,
        what="the full evaluation after the consumer came back",
    )


def test_changes_reach_the_evaluator_through_its_view_alone_with_no_durable_consumer_on_the_objects(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    """Every object message is read once by the evaluator (its view follows the stream and hands on what
    each asks for), not a second time by a durable work consumer with its acknowledgements."""
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "viewed", cert, key, labels={"app": "viewed"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "viewed"}})
    wait_for(
        lambda: cluster.annotations(namespace, "viewed").get("certcheck.dev/state") == "ExpiringSoon",
        timeout=30,
        what="the change evaluated",
    )

    async def durables() -> list[str]:
        nc = await nats.connect(stack.nats.url)
        try:
            infos = await nc.jetstream().consumers_info(OBJECTS.name)
            return [info.config.durable_name for info in infos if info.config.durable_name]
        finally:
            await nc.close()

    assert asyncio.run(durables()) == []
