"""The lifecycle facts of certificate slots between two evaluations: first seen, rotated, state
changed, removed with why; nothing when nothing changed, and the same facts (ids) when derived again."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime

import pytest

from schemas.events import CertificateFacts, RemovedBecause, cloud_event, event_id
from services.domain.lifecycle import Seen, Slot, Watcher, lifecycle_facts

NOW = datetime.now(UTC)
WATCHER = Watcher("prod", "shop", "web", 30)
SLOT = Slot("Secret", "web-tls", "uid-1", "tls.crt", 0)
OLD = CertificateFacts("aa" * 32, "01", not_after="2027-01-01T00:00:00Z")
NEW = CertificateFacts("bb" * 32, "02", not_after="2027-06-01T00:00:00Z")


def never_gone(slot: Slot) -> RemovedBecause:
    raise AssertionError(f"{slot} is not gone")


def test_a_slot_first_seen_is_discovered_in_its_state() -> None:
    [(token, event)] = lifecycle_facts(WATCHER, {}, {SLOT: Seen("Valid", OLD)}, never_gone)
    assert token == "discovered" and event.state == "Valid" and event.certificate == OLD
    assert (event.cluster, event.namespace, event.certcheck, event.threshold_days) == (
        "prod",
        "shop",
        "web",
        30,
    )


def test_nothing_changed_gives_no_fact() -> None:
    seen = {SLOT: Seen("ExpiringSoon", OLD)}
    assert lifecycle_facts(WATCHER, seen, dict(seen), never_gone) == []


def test_a_state_that_moved_is_a_state_change_with_the_previous_state() -> None:
    facts = lifecycle_facts(
        WATCHER, {SLOT: Seen("Valid", OLD)}, {SLOT: Seen("ExpiringSoon", OLD)}, never_gone
    )
    [(token, event)] = facts
    assert token == "statechanged" and (event.previous_state, event.state) == ("Valid", "ExpiringSoon")


def test_a_replaced_certificate_is_a_rotation_and_a_state_change_when_the_state_moved() -> None:
    facts = lifecycle_facts(
        WATCHER, {SLOT: Seen("ExpiringSoon", OLD)}, {SLOT: Seen("Valid", NEW)}, never_gone
    )
    assert [token for token, _ in facts] == ["rotated", "statechanged"]
    rotated = facts[0][1]
    assert rotated.previous_certificate == OLD and rotated.certificate == NEW
    same_state = lifecycle_facts(WATCHER, {SLOT: Seen("Valid", OLD)}, {SLOT: Seen("Valid", NEW)}, never_gone)
    assert [token for token, _ in same_state] == ["rotated"]


def test_a_slot_becoming_readable_is_a_state_change_not_a_rotation() -> None:
    facts = lifecycle_facts(
        WATCHER,
        {SLOT: Seen("Invalid", None, "no certificate")},
        {SLOT: Seen("Valid", NEW)},
        never_gone,
    )
    assert [(token, event.previous_state) for token, event in facts] == [("statechanged", "Invalid")]


def test_a_slot_gone_is_removed_saying_why() -> None:
    why: dict[Slot, RemovedBecause] = {SLOT: "ObjectDeleted"}
    [(token, event)] = lifecycle_facts(WATCHER, {SLOT: Seen("Valid", OLD)}, {}, why.__getitem__)
    assert token == "removed" and event.removed_because == "ObjectDeleted" and event.certificate == OLD


def test_a_secret_recreated_under_the_same_name_is_another_slot() -> None:
    again = Slot("Secret", "web-tls", "uid-2", "tls.crt", 0)
    facts = lifecycle_facts(
        WATCHER, {SLOT: Seen("Valid", OLD)}, {again: Seen("Valid", OLD)}, lambda slot: "ObjectDeleted"
    )
    assert sorted(token for token, _ in facts) == ["discovered", "removed"]


def test_facts_derived_again_have_the_same_ids_and_validate_as_events() -> None:
    before, after = {SLOT: Seen("Valid", OLD)}, {SLOT: Seen("Expired", NEW)}
    first = lifecycle_facts(WATCHER, before, after, never_gone)
    second = lifecycle_facts(WATCHER, before, after, never_gone)
    assert [event_id(t, e) for t, e in first] == [event_id(t, e) for t, e in second]
    for token, event in first:
        assert json.loads(cloud_event(token, event, "2026-12-05T00:00:00Z").data)["state"] == "Expired"


def _slot(name: str) -> dict[Slot, Seen]:
    return {Slot("Secret", name, f"uid-{name}", "tls.crt", 0): Seen("Valid")}


def test_what_a_certcheck_told_is_written_at_once_then_at_most_once_per_interval_with_the_latest() -> None:
    from services.evaluator.lifecycle import LifecycleEvents, decode_told
    from tests.fakes import FakeKeyValue

    async def scenario() -> None:
        bucket = FakeKeyValue()
        events = LifecycleEvents(None, bucket, "default", write_every_seconds=0.2)  # type: ignore[arg-type]

        def told() -> set[str]:
            return {s.object_name for s in decode_told(bucket.entries["ns.c"].value).slots}

        await events._remember("ns", "c", 30, _slot("a"))
        await asyncio.sleep(0.05)
        assert told() == {"a"} and bucket.revision == 1  # the first write is at once (in the background)
        await events._remember("ns", "c", 30, _slot("b"))
        await events._remember("ns", "c", 30, {**_slot("b"), **_slot("c")})
        assert told() == {"a"}  # a burst waits for the interval...
        await asyncio.sleep(1.0)
        assert told() == {"b", "c"} and bucket.revision == 2  # ...then writes the latest, once

    asyncio.run(scenario())


def test_a_removed_certcheck_cancels_the_write_that_was_waiting() -> None:
    from services.evaluator.lifecycle import LifecycleEvents
    from tests.fakes import FakeKeyValue

    async def scenario() -> None:
        bucket = FakeKeyValue()
        events = LifecycleEvents(None, bucket, "default", write_every_seconds=0.3)  # type: ignore[arg-type]
        await events._remember("ns", "c", 30, _slot("a"))
        await asyncio.sleep(0.05)
        await events._remember("ns", "c", 30, {})  # waits (then the CertCheck goes: nothing to tell)
        assert ("ns", "c") in events._pending
        await events.certcheck_removed("ns", "c", NOW)
        await asyncio.sleep(0.6)
        assert "ns.c" not in bucket.entries and bucket.revision == 1

    asyncio.run(scenario())


def test_what_waits_for_its_interval_is_written_at_once_when_the_partition_is_handed_over() -> None:
    from services.evaluator.lifecycle import LifecycleEvents, decode_told
    from tests.fakes import FakeKeyValue

    async def scenario() -> None:
        bucket = FakeKeyValue()
        events = LifecycleEvents(None, bucket, "default", write_every_seconds=60)  # type: ignore[arg-type]
        await events._remember("ns", "c", 30, _slot("a"))
        await asyncio.sleep(0.05)
        await events._remember("ns", "c", 30, _slot("b"))  # waits a minute
        await events.flush()
        assert {s.object_name for s in decode_told(bucket.entries["ns.c"].value).slots} == {"b"}
        assert events._pending == {} and bucket.revision == 2

    asyncio.run(scenario())


def test_what_a_certcheck_told_is_written_in_the_background_and_encoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.evaluator import lifecycle
    from tests.fakes import FakeKeyValue

    encoded_on: list[threading.Thread] = []
    encode_told = lifecycle.encode_told

    def encode(threshold_days: int, told: dict[Slot, Seen]) -> bytes:
        encoded_on.append(threading.current_thread())
        return encode_told(threshold_days, told)

    monkeypatch.setattr(lifecycle, "encode_told", encode)

    async def scenario() -> None:
        bucket = FakeKeyValue()
        events = lifecycle.LifecycleEvents(None, bucket, "default")  # type: ignore[arg-type]
        await events._remember("ns", "c", 30, _slot("a"))
        assert "ns.c" not in bucket.entries  # the evaluation does not wait for the write...
        await asyncio.sleep(0.05)
        assert "ns.c" in bucket.entries  # ...which follows at once

    asyncio.run(scenario())
    assert encoded_on and threading.main_thread() not in encoded_on
