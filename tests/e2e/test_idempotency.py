"""The same events delivered again, or after restarts, change nothing and write nothing."""

from __future__ import annotations

import asyncio

import nats
from nats.js.api import DeliverPolicy

from devcluster.certs import expiring_in
from devcluster.stack import Stack
from schemas.messages import Due, encoder
from schemas.streams import HDR_MSG_ID, OBJECTS, RECORDER_CONSUMER, RESULTS, TRIGGERS
from tests import subjects as test_subjects
from tests.conftest import RECORDER_USER, AuditLog, Cluster, wait_for, wait_idle, wait_settled
from tests.e2e.helpers import metric


async def replay_namespace_objects(url: str, namespace: str) -> int:
    """Publish every observed object of a namespace once more, as a second delivery would bring it."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(OBJECTS.name, subjects_filter=f"certcheck.v1.objects.*.*.{namespace}.>")
    count = len(info.state.subjects or {})
    sub = await js.subscribe(
        f"certcheck.v1.objects.*.*.{namespace}.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    copies = []
    for _ in range(count):
        msg = await sub.next_msg(timeout=5)
        headers = {k: v for k, v in (msg.headers or {}).items() if k != HDR_MSG_ID}
        copies.append((msg.subject, msg.data, headers))
    await sub.unsubscribe()
    for subject, data, headers in copies:
        await js.publish(subject, data, headers=headers)
    await nc.close()
    return len(copies)


async def fire_due(url: str, namespace: str, name: str) -> None:
    nc = await nats.connect(url)
    due = Due(namespace=namespace, name=name, due_at="2026-01-01T00:00:00Z")
    await nc.jetstream().publish(
        test_subjects.due_subject(namespace, name), encoder.encode(due), stream=TRIGGERS.name
    )
    await nc.close()


async def delete_recorder_consumer(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().delete_consumer(RESULTS.name, RECORDER_CONSUMER)
    await nc.close()


def test_replaying_events_and_results_after_restarts_writes_nothing(
    cluster: Cluster, namespace: str, stack: Stack, audit: AuditLog
) -> None:
    for name, days in (("expired", -1), ("expiring", 10), ("healthy", 200)):
        cert, key = expiring_in(days)
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "replay"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "replay"}})
    wait_for(lambda: len(cluster.events(namespace)) == 4, what="two Secret and two CertCheck Events")
    wait_for(
        lambda: all(
            cluster.annotations(namespace, n).get("certcheck.dev/state")
            for n in ("expired", "expiring", "healthy")
        ),
        what="annotations",
    )
    wait_settled(stack, cluster, namespace)  # the status and annotation writes, and what they bring back
    events_before = sorted((e.metadata.name, e.count) for e in cluster.events(namespace))
    mark = audit.mark()

    # 1. The watcher's events for this namespace, delivered a second time.
    assert asyncio.run(replay_namespace_objects(stack.nats.url, namespace)) == 4
    # 2. A due trigger although nothing is due: a full re-evaluation of the CertCheck.
    evaluations = metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="due"')
    asyncio.run(fire_due(stack.nats.url, namespace, "c"))
    wait_for(
        lambda: metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="due"') > evaluations,
        what="the due evaluation",
    )
    wait_idle(stack)  # its result applied: what step 3 delivers again is all known to the recorder
    # 3. Every retained result redelivered to a restarted recorder (a new consumer starts from the beginning).
    stack.services["recorder"].kill()
    asyncio.run(delete_recorder_consumer(stack.nats.url))
    stack.start_service("recorder")
    # Each is found applied (its mark) or, leaving the status as it is, applied again as the no-op it is.
    wait_for(
        lambda: metric(stack, "recorder", "certcheck_recorder_results_total") > 0,
        what="redelivered results",
    )
    # 4. A restarted evaluator re-evaluates everything.
    stack.restart_service("evaluator")
    wait_for(
        lambda: metric(stack, "evaluator", "certcheck_sweeps_total", 'trigger="start"') > 0,
        what="the start-up evaluation published",
    )
    # Everything the four brought is applied (and acknowledged) or dropped: only then is "nothing" proven.
    wait_idle(stack)

    assert audit.writes(mark, namespace, RECORDER_USER) == []
    assert sorted((e.metadata.name, e.count) for e in cluster.events(namespace)) == events_before
