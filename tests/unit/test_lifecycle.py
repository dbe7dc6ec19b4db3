"""The lifecycle facts of certificate slots between two evaluations: first seen, rotated, state
changed, removed with why; nothing when nothing changed, and the same facts (ids) when derived again."""

from __future__ import annotations

import json

from schemas.events import CertificateFacts, RemovedBecause, cloud_event, event_id
from services.domain.lifecycle import Seen, Slot, Watcher, lifecycle_facts

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
