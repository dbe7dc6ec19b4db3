"""A message nobody can process is parked on the dead-letter stream with its reason, and counted;
it never crashes a service nor comes back for ever, and everything else keeps flowing."""

from __future__ import annotations

import asyncio

import nats

from devcluster.certs import expiring_in
from devcluster.stack import SERVICES, Stack
from schemas import subjects
from schemas.streams import DEADLETTER, HDR_DEAD_REASON
from tests import subjects as test_subjects
from tests.conftest import Cluster, wait_for
from tests.e2e.helpers import metric


async def publish(url: str, subject: str, data: bytes) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().publish(subject, data)
    await nc.close()


async def dead_letters(url: str, namespace: str) -> dict[str, str]:
    """Dead-lettered subjects of a namespace (objects or results), with the reason of the last one."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    found = {}
    info = await js.stream_info(DEADLETTER.name, subjects_filter=subjects.DEADLETTER_ALL)
    for subject in info.state.subjects or {}:
        if f".{namespace}." in subject:
            msg = await js.get_last_msg(DEADLETTER.name, subject)
            found[subject] = (msg.headers or {}).get(HDR_DEAD_REASON, "")
    await nc.close()
    return found


def test_garbage_on_the_bus_is_dead_lettered_and_the_pipeline_keeps_flowing(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    url = stack.nats.url
    asyncio.run(publish(url, test_subjects.object_subject("secret", namespace, "garbage"), b"\xff not json"))
    asyncio.run(publish(url, subjects.result_subject(namespace, "garbage"), b'{"kind": "Nope/v9"}'))
    found = wait_for(
        lambda: len(d := asyncio.run(dead_letters(url, namespace))) >= 2 and d,
        timeout=20,
        what="two dead letters",
    )
    garbage = test_subjects.object_subject("secret", namespace, "garbage")
    assert found[subjects.deadletter_subject(garbage)].startswith("undecodable object message")
    assert found[f"certcheck.v1.deadletter.results.{namespace}.garbage"].startswith("undecodable result")
    assert metric(stack, "evaluator", "certcheck_dead_letters_total") >= 1

    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "fine", cert, key, labels={"app": "dl"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "dl"}})
    wait_for(
        lambda: cluster.status(namespace, "c").get("expiringSoonCount") == 1, what="the pipeline still works"
    )
    assert all(stack.services[name].running for name in SERVICES)
