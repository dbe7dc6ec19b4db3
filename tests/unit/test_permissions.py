"""The NATS permissions shipped in k8s/nats/auth.conf are the ones schemas/permissions.py defines."""

from __future__ import annotations

from pathlib import Path

from schemas import subjects
from schemas.permissions import NATS_USERS, SERVICE_PERMISSIONS, STREAM_OWNERS, nats_authorization
from schemas.streams import ALL_STREAMS

AUTH_CONF = Path(__file__).resolve().parents[2] / "k8s" / "nats" / "auth.conf"


def test_the_shipped_auth_conf_is_the_generated_one() -> None:
    assert AUTH_CONF.read_text() == nats_authorization(), (
        "run: python -m schemas.permissions > k8s/nats/auth.conf"
    )


def test_only_the_watcher_publishes_observed_objects_and_only_the_evaluator_results() -> None:
    publishers = {
        pattern: sorted(user for user, p in SERVICE_PERMISSIONS.items() if pattern in p.publish)
        for pattern in (
            subjects.OBJECTS_ALL,
            subjects.RESULTS_ALL,
            subjects.SCHEDULE_ALL,
            subjects.CLEANUP_ALL,
        )
    }
    assert publishers == {
        subjects.OBJECTS_ALL: ["watcher"],
        subjects.RESULTS_ALL: ["evaluator"],
        subjects.SCHEDULE_ALL: ["evaluator"],
        subjects.CLEANUP_ALL: ["evaluator"],
    }


def test_no_service_may_publish_everywhere_or_manage_streams_beyond_creating_them() -> None:
    for user, permissions in SERVICE_PERMISSIONS.items():
        for pattern in permissions.publish:
            assert pattern not in (">", "$JS.API.>", "$JS.>", "certcheck.>", "certcheck.v1.>"), user
            assert ".STREAM.DELETE." not in pattern and ".STREAM.MSG.DELETE." not in pattern, user


def test_only_the_stream_owners_may_create_or_update_the_certcheck_streams() -> None:
    for user, permissions in NATS_USERS.items():
        for stream in ALL_STREAMS:
            for verb in ("CREATE", "UPDATE"):
                allowed = f"$JS.API.STREAM.{verb}.{stream.name}" in permissions.publish
                assert allowed == (user in STREAM_OWNERS), (user, verb, stream.name)


def test_no_service_may_delete_a_consumer() -> None:
    for user, permissions in SERVICE_PERMISSIONS.items():
        assert not [p for p in permissions.publish if ".CONSUMER.DELETE." in p], user


def test_the_evaluator_reads_the_recorders_applied_marks_and_only_the_recorder_writes_them() -> None:
    from schemas.streams import RECORDER_APPLIED_BUCKET

    writes = f"$KV.{RECORDER_APPLIED_BUCKET}.>"
    reads = f"$JS.API.DIRECT.GET.KV_{RECORDER_APPLIED_BUCKET}.>"
    assert sorted(u for u, p in SERVICE_PERMISSIONS.items() if writes in p.publish) == ["recorder"]
    assert sorted(u for u, p in SERVICE_PERMISSIONS.items() if reads in p.publish) == [
        "evaluator",
        "recorder",
    ]
