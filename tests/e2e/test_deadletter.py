"""A message nobody can process is parked on the dead-letter stream with its reason, and counted;
it never crashes a service nor comes back for ever, and everything else keeps flowing."""

from __future__ import annotations

import asyncio

import nats
from kubernetes import client

from devcluster.certs import expiring_in
from devcluster.stack import SERVICES, Stack
from schemas import subjects
from schemas.messages import AnnotationPatch, CertCheckStatus, EvaluationResult, encoder
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


def forged_result(namespace: str, certcheck: str, *patches: AnnotationPatch) -> bytes:
    result = EvaluationResult(namespace, certcheck, "u", 1, "", 1, CertCheckStatus(), False, list(patches))
    return encoder.encode(result)


def refused_results(stack: Stack) -> float:
    return metric(stack, "recorder", "certcheck_recorder_results_total", 'outcome="refused"')


def test_a_forged_result_naming_a_foreign_annotation_key_changes_nothing(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    """Whoever holds the evaluator's password may publish results; they still cannot make the recorder
    write (or remove) anything but certcheck's own annotations."""
    cert, key = expiring_in(10)
    victim = cluster.create_tls_secret(namespace, "victim", cert, key)
    cluster.core.patch_namespaced_secret(
        "victim", namespace, {"metadata": {"annotations": {"owner.example.com/team": "payments"}}}
    )
    before = refused_results(stack)
    patch = AnnotationPatch(
        namespace,
        "victim",
        victim.metadata.uid,
        {"owner.example.com/team": None, "certcheck.dev/state": "Expired"},
    )
    subject = subjects.result_subject(namespace, "forged")
    asyncio.run(publish(stack.nats.url, subject, forged_result(namespace, "forged", patch)))
    dead = subjects.deadletter_subject(subject)
    reason = wait_for(
        lambda: asyncio.run(dead_letters(stack.nats.url, namespace)).get(dead),
        timeout=20,
        what="the forged result dead-lettered",
    )
    assert reason.startswith("refused result") and "owner.example.com/team" in reason
    wait_for(lambda: refused_results(stack) > before, timeout=10, what="the recorder's refusal counted")
    annotations = cluster.core.read_namespaced_secret("victim", namespace).metadata.annotations or {}
    assert annotations.get("owner.example.com/team") == "payments"
    assert "certcheck.dev/state" not in annotations  # all or nothing: the whole result is refused


def test_a_result_whose_body_names_another_namespace_than_its_subject_writes_nothing_there(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    other = f"{namespace}-other"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        cert, key = expiring_in(10)
        victim = cluster.create_tls_secret(other, "victim", cert, key)
        before = refused_results(stack)
        patch = AnnotationPatch(other, "victim", victim.metadata.uid, {"certcheck.dev/state": "Expired"})
        # Published on a subject of ``namespace``, speaking of ``other``: the patch, and the body.
        subject = subjects.result_subject(namespace, "c")
        for forged in (forged_result(namespace, "c", patch), forged_result(other, "c")):
            asyncio.run(publish(stack.nats.url, subject, forged))
            wait_for(lambda seen=before: refused_results(stack) > seen, timeout=20, what="the refusal")
            before = refused_results(stack)
        reason = asyncio.run(dead_letters(stack.nats.url, namespace))[subjects.deadletter_subject(subject)]
        assert reason.startswith("refused result") and other in reason
        annotations = cluster.core.read_namespaced_secret("victim", other).metadata.annotations or {}
        assert "certcheck.dev/state" not in annotations
    finally:
        cluster.core.delete_namespace(other)
