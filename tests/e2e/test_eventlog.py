"""`certcheck events` and `certcheck history` read the public events as an outside subscriber does (the
NATS user `subscriber`): filtered on the subject's tokens, replayed from a time, one object's timeline."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import nats
import pytest

from devcluster.stack import REPO, Stack
from schemas.events import (
    DISCOVERED,
    REMOVED,
    ROTATED,
    STATE_CHANGED,
    CertificateEvent,
    CertificateFacts,
    cloud_event,
)
from schemas.permissions import SUBSCRIBER_USER

OLD = CertificateFacts(
    "aa" * 32, "01", "web.shop", "R3", ["web.shop"], "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"
)
NEW = CertificateFacts(
    "bb" * 32, "02", "web.shop", "R3", ["web.shop"], "2026-12-01T00:00:00Z", "2027-12-01T00:00:00Z"
)


def timeline(namespace: str) -> list[tuple[str, CertificateEvent, str]]:
    seen = CertificateEvent(
        "default", namespace, "Secret", "web.tls", "uid-1", "tls.crt", 0, "web", 30, "Valid", OLD
    )
    other = CertificateEvent(
        "default", namespace, "Secret", "api", "uid-2", "tls.crt", 0, "web", 30, "Valid", NEW
    )
    return [
        (DISCOVERED, seen, "2026-12-01T00:00:00Z"),
        (DISCOVERED, other, "2026-12-01T00:00:01Z"),
        (
            STATE_CHANGED,
            CertificateEvent(**{**_fields(seen), "state": "ExpiringSoon", "previous_state": "Valid"}),
            "2026-12-02T00:00:00Z",
        ),
        (
            ROTATED,
            CertificateEvent(**{**_fields(seen), "certificate": NEW, "previous_certificate": OLD}),
            "2026-12-03T00:00:00Z",
        ),
        (
            STATE_CHANGED,
            CertificateEvent(
                **{**_fields(seen), "certificate": NEW, "state": "Valid", "previous_state": "ExpiringSoon"}
            ),
            "2026-12-03T00:00:00Z",
        ),
        (
            REMOVED,
            CertificateEvent(**{**_fields(seen), "certificate": NEW, "removed_because": "ObjectDeleted"}),
            "2026-12-04T00:00:00Z",
        ),
    ]


def _fields(event: CertificateEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__struct_fields__}


@pytest.fixture
def published(stack: Stack, namespace: str) -> str:
    async def publish() -> None:
        nc = await nats.connect(stack.nats.url)
        try:
            js = nc.jetstream()
            for token, event, time in timeline(namespace):
                message = cloud_event(token, event, time)
                await js.publish(message.subject, message.data, headers=message.headers)
        finally:
            await nc.close()

    asyncio.run(publish())
    return namespace


def certcheck(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    users = stack.nats.users or {}
    credentials = ["--nats-url", stack.nats.address, "--nats-user", SUBSCRIBER_USER]
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args, *credentials],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"CERTCHECK_NATS_PASSWORD": users[SUBSCRIBER_USER], "PATH": "/usr/bin:/bin"},
    )


def test_history_prints_one_objects_timeline_in_order(stack: Stack, published: str) -> None:
    shown = certcheck(stack, "history", f"{published}/web.tls")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "discovered",
        "statechanged",
        "rotated",
        "statechanged",
        "removed",
    ]
    assert "Valid -> ExpiringSoon" in lines[1]
    assert "(was sha256 aaaaaaaaaaaa)" in lines[2]
    assert lines[4].endswith("because ObjectDeleted")
    assert all(f"{published}/Secret/web.tls tls.crt[0]" in line for line in lines)  # never the other Secret


def test_events_filter_on_type_and_print_json_cloudevents(stack: Stack, published: str) -> None:
    shown = certcheck(stack, "events", "--namespace", published, "--type", "statechanged", "--json")
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [e["ce-type"] for e in events] == ["dev.certcheck.certificate.statechanged.v1"] * 2
    assert [e["data"]["previousState"] for e in events] == ["Valid", "ExpiringSoon"]


def test_events_since_a_time_after_everything_prints_nothing(stack: Stack, published: str) -> None:
    shown = certcheck(stack, "events", "--namespace", published, "--since", "2999-01-01T00:00:00Z")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == ""
    everything = certcheck(stack, "events", "--namespace", published, "--since", "1h")
    assert len(everything.stdout.splitlines()) == 6
