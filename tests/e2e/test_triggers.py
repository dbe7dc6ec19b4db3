"""Each trigger leads to a fresh evaluation of exactly the affected CertChecks, and leaves no litter."""

from __future__ import annotations

from devcluster.certs import expiring_in, tls_secret_data
from devcluster.stack import Stack
from schemas.subjects import KIND_SECRET
from tests import subjects as test_subjects
from tests.conftest import (
    RECORDER_USER,
    AuditLog,
    Cluster,
    published,
    wait_for,
    wait_idle,
    wait_settled,
)
from tests.e2e.helpers import metric


def names_in_status(cluster: Cluster, namespace: str, certcheck: str) -> list[str]:
    return sorted(c["name"] for c in cluster.status(namespace, certcheck).get("certificates", []))


def owned(annotations: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in annotations.items() if k.startswith("certcheck.dev/")}


def test_threshold_change_reevaluates_the_certcheck(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(20)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "a"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "a"}}, threshold=10)
    wait_for(lambda: cluster.status(namespace, "c").get("validCount") == 1, what="Valid under 10 days")

    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev", "v1alpha1", namespace, "certchecks", "c", {"spec": {"threshold": 30}}
    )
    status = cluster.wait_status(namespace, "c", expiringSoonCount=1)
    assert status["observedGeneration"] == 2
    assert cluster.annotations(namespace, "s")["certcheck.dev/state"] == "ExpiringSoon"


def test_selector_change_moves_secrets_in_and_out_and_cleans_up(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "blue", cert, key, labels={"color": "blue"})
    cluster.create_tls_secret(namespace, "green", cert, key, labels={"color": "green"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"color": "blue"}})
    wait_for(lambda: names_in_status(cluster, namespace, "c") == ["blue"], what="blue selected")
    wait_for(lambda: owned(cluster.annotations(namespace, "blue")), what="blue annotated")

    cluster.custom.patch_namespaced_custom_object(
        "certcheck.dev",
        "v1alpha1",
        namespace,
        "certchecks",
        "c",
        {"spec": {"selector": {"matchLabels": {"color": "green"}}}},
    )
    wait_for(lambda: names_in_status(cluster, namespace, "c") == ["green"], what="green selected")
    wait_for(lambda: owned(cluster.annotations(namespace, "green")), what="green annotated")
    wait_for(lambda: not owned(cluster.annotations(namespace, "blue")), what="blue's annotations removed")


def test_deleting_a_certcheck_removes_its_annotations_but_keeps_those_another_needs(
    cluster: Cluster, namespace: str
) -> None:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "only-a", cert, key, labels={"a": "1"})
    cluster.create_tls_secret(namespace, "both", cert, key, labels={"a": "1", "b": "1"})
    cluster.create_certcheck(namespace, "a", {"matchLabels": {"a": "1"}})
    cluster.create_certcheck(namespace, "b", {"matchLabels": {"b": "1"}})
    wait_for(
        lambda: cluster.annotations(namespace, "both").get("certcheck.dev/checked-by") == "a,b",
        what="both covered by a and b",
    )
    wait_for(lambda: owned(cluster.annotations(namespace, "only-a")), what="only-a annotated")

    cluster.custom.delete_namespaced_custom_object("certcheck.dev", "v1alpha1", namespace, "certchecks", "a")
    wait_for(lambda: not owned(cluster.annotations(namespace, "only-a")), what="only-a cleaned")
    wait_for(
        lambda: cluster.annotations(namespace, "both").get("certcheck.dev/checked-by") == "b",
        what="both now covered by b only",
    )
    assert cluster.annotations(namespace, "both")["certcheck.dev/state"] == "Valid"


def test_secret_entering_and_leaving_a_selector_by_its_labels(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(100)
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"watched": "yes"}})
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"watched": "no"})
    wait_for(lambda: cluster.status(namespace, "c").get("conditions"), what="first evaluation")
    assert names_in_status(cluster, namespace, "c") == []

    cluster.core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"watched": "yes"}}})
    wait_for(lambda: names_in_status(cluster, namespace, "c") == ["s"], what="s entered")
    wait_for(lambda: owned(cluster.annotations(namespace, "s")), what="s annotated")

    cluster.core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"watched": "no"}}})
    wait_for(lambda: names_in_status(cluster, namespace, "c") == [], what="s left")
    wait_for(lambda: not owned(cluster.annotations(namespace, "s")), what="s cleaned")


def test_deleted_secret_leaves_the_status(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(100)
    for name in ("keep", "drop"):
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(lambda: names_in_status(cluster, namespace, "c") == ["drop", "keep"], what="both listed")
    cluster.core.delete_namespaced_secret("drop", namespace)
    status = cluster.wait_status(namespace, "c", targetCertsCount=1)
    assert [c["name"] for c in status["certificates"]] == ["keep"]


def test_a_secret_selected_by_two_certchecks_updates_both(cluster: Cluster, namespace: str) -> None:
    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "shared", cert, key, labels={"app": "x", "team": "t"})
    cluster.create_certcheck(namespace, "by-app", {"matchLabels": {"app": "x"}})
    cluster.create_certcheck(namespace, "by-team", {"matchLabels": {"team": "t"}})
    wait_for(
        lambda: all(cluster.status(namespace, c).get("validCount") == 1 for c in ("by-app", "by-team")),
        what="both Valid",
    )

    renewed, renewed_key = expiring_in(5)
    cluster.core.patch_namespaced_secret("shared", namespace, {"data": tls_secret_data(renewed, renewed_key)})
    wait_for(
        lambda: all(
            cluster.status(namespace, c).get("expiringSoonCount") == 1 for c in ("by-app", "by-team")
        ),
        what="both ExpiringSoon",
    )


def test_two_certchecks_with_different_thresholds_never_fight(
    cluster: Cluster, namespace: str, stack: Stack, audit: AuditLog
) -> None:
    cert, key = expiring_in(20)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "strict", {"matchLabels": {"app": "x"}}, threshold=30)
    cluster.create_certcheck(namespace, "lenient", {"matchLabels": {"app": "x"}}, threshold=7)
    wait_for(lambda: cluster.status(namespace, "strict").get("expiringSoonCount") == 1, what="strict")
    wait_for(lambda: cluster.status(namespace, "lenient").get("validCount") == 1, what="lenient")
    wait_for(
        lambda: cluster.annotations(namespace, "s").get("certcheck.dev/checked-by") == "lenient,strict",
        what="annotations settled",
    )
    assert cluster.annotations(namespace, "s")["certcheck.dev/state"] == "ExpiringSoon"

    wait_settled(stack, cluster, namespace)  # the status writes too, and what they bring back
    mark = audit.mark()
    evaluations = metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="change"')
    touched = cluster.core.patch_namespaced_secret("s", namespace, {"metadata": {"labels": {"touch": "1"}}})
    wait_for(
        lambda: published(stack, KIND_SECRET, namespace, "s", touched.metadata.resource_version),
        what="the watcher to publish the touch",
    )
    # Both CertChecks evaluated again, and every result they gave applied: still no write.
    wait_for(
        lambda: (
            metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="change"') >= evaluations + 2
        ),
        what="both CertChecks evaluated again",
    )
    wait_idle(stack)
    assert audit.writes(mark, namespace, RECORDER_USER) == []


def test_a_change_to_a_secret_nobody_selects_triggers_no_evaluation(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(100)
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    cluster.create_tls_secret(namespace, "stranger", cert, key, labels={"app": "other"})
    wait_for(lambda: cluster.status(namespace, "c").get("conditions"), what="first evaluation")
    wait_settled(stack, cluster, namespace)  # the status write comes back as a change of the CertCheck
    evaluations = metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="change"')

    renewed, renewed_key = expiring_in(3)
    changed = cluster.core.patch_namespaced_secret(
        "stranger", namespace, {"data": tls_secret_data(renewed, renewed_key)}
    )
    wait_for(
        lambda: published(stack, KIND_SECRET, namespace, "stranger", changed.metadata.resource_version),
        what="the watcher to publish the change",
    )
    wait_idle(stack)  # the evaluator took the change (and acknowledged it) without evaluating anything
    assert metric(stack, "evaluator", "certcheck_evaluations_total", 'trigger="change"') == evaluations
    assert not owned(cluster.annotations(namespace, "stranger"))


def test_a_secret_created_after_its_certcheck_is_picked_up(cluster: Cluster, namespace: str) -> None:
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "late"}})
    wait_for(lambda: cluster.status(namespace, "c").get("conditions"), what="first evaluation")
    cert, key = expiring_in(3)
    cluster.create_tls_secret(namespace, "late", cert, key, labels={"app": "late"})
    wait_for(lambda: cluster.status(namespace, "c").get("expiringSoonCount") == 1, what="the new Secret")


def test_deleting_a_certcheck_cancels_its_schedule(cluster: Cluster, namespace: str, stack: Stack) -> None:
    import asyncio

    import nats
    from nats.js.errors import NotFoundError

    from schemas.streams import HDR_SCHEDULE, TRIGGERS

    async def pending_schedules() -> int:
        """1 while the CertCheck's schedule is pending (a cancelled one leaves a plain message)."""
        nc = await nats.connect(stack.nats.url)
        try:
            last = await nc.jetstream().get_last_msg(
                TRIGGERS.name, test_subjects.schedule_subject(namespace, "c")
            )
        except NotFoundError:
            return 0
        finally:
            await nc.close()
        return 1 if HDR_SCHEDULE in (last.headers or {}) else 0

    cert, key = expiring_in(100)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(lambda: asyncio.run(pending_schedules()) == 1, what="a pending schedule")
    cluster.custom.delete_namespaced_custom_object("certcheck.dev", "v1alpha1", namespace, "certchecks", "c")
    wait_for(lambda: asyncio.run(pending_schedules()) == 0, what="the schedule to be cancelled")


def test_periodic_resync_reevaluates_everything_and_writes_nothing_new(
    cluster: Cluster, namespace: str, stack: Stack, audit: AuditLog
) -> None:
    cert, key = expiring_in(50)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "x"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "x"}})
    wait_for(lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state"), what="recorded")
    wait_settled(stack, cluster, namespace)
    stack.services["evaluator"].stop()
    # Resync every second; the status is refreshed only hourly, so an unchanged one is never rewritten.
    env = {"CERTCHECK_RESYNC_INTERVAL_SECONDS": "1", "CERTCHECK_STATUS_REFRESH_SECONDS": "3600"}
    stack.start_service("evaluator", env)
    try:
        mark = audit.mark()
        wait_for(
            lambda: metric(stack, "evaluator", "certcheck_sweeps_total", 'trigger="resync"') >= 3,
            what="three resyncs",
        )
        wait_idle(stack)  # what the sweeps published is applied (or was found to need nothing)
        assert audit.writes(mark, namespace, RECORDER_USER) == []
    finally:
        stack.restart_service("evaluator", kill=False)


def test_annotations_edited_by_hand_are_put_back_every_time_and_across_a_recorder_restart(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "hand"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "hand"}})
    wait_for(
        lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "ExpiringSoon", what="state"
    )
    wait_settled(stack, cluster, namespace)
    events_before = sorted((e.reason, e.count) for e in cluster.events(namespace, "Secret", "s"))
    assert events_before == [("ExpiringSoon", 1)]

    for round_ in range(3):
        if round_ == 2:
            stack.restart_service("recorder")
        cluster.core.patch_namespaced_secret(
            "s", namespace, {"metadata": {"annotations": {"certcheck.dev/state": "Valid"}}}
        )
        wait_for(
            lambda: cluster.annotations(namespace, "s").get("certcheck.dev/state") == "ExpiringSoon",
            what=f"repair {round_ + 1}",
        )
    wait_settled(stack, cluster, namespace)
    assert sorted((e.reason, e.count) for e in cluster.events(namespace, "Secret", "s")) == events_before


def test_a_status_edited_by_hand_is_put_back_without_telling_anything_again(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    cert, key = expiring_in(10)
    cluster.create_tls_secret(namespace, "s", cert, key, labels={"app": "hand"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "hand"}})
    written = cluster.wait_status(namespace, "c", expiringSoonCount=1)
    wait_settled(stack, cluster, namespace)

    def told() -> list[tuple[str, str, int]]:
        return sorted((e.involved_object.name, e.reason, e.count) for e in cluster.events(namespace))

    events_before = told()
    assert ("c", "ExpiringSoon", 1) in events_before
    cluster.custom.patch_namespaced_custom_object_status(
        "certcheck.dev",
        "v1alpha1",
        namespace,
        "certchecks",
        "c",
        {"status": {"expiringSoonCount": 0, "validCount": 1, "certificates": None}},
    )
    assert cluster.status(namespace, "c")["validCount"] == 1
    # Looked at the status check delay (10 s) after the edit came back, then evaluated and written.
    status = wait_for(
        lambda: (s := cluster.status(namespace, "c")).get("expiringSoonCount") == 1 and s,
        timeout=40,
        what="the status put back",
    )
    assert status["validCount"] == 0
    assert status["certificates"] == written["certificates"]
    wait_settled(stack, cluster, namespace)
    assert told() == events_before
    assert metric(stack, "evaluator", "certcheck_evaluator_statuses_put_back_total") >= 1
