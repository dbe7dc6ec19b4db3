"""What ensure_streams may change on a running stream by itself, and what it only reports."""

from __future__ import annotations

import dataclasses

from nats.js.api import StreamConfig

from schemas.streams import RESULTS
from services.common.bus import stream_drift, wanted_config, with_additions


def wanted(replicas: int = 1) -> StreamConfig:
    return wanted_config(RESULTS, replicas, None)


def test_a_stream_as_wanted_shows_no_drift() -> None:
    assert stream_drift(wanted(), wanted()) == []


def test_more_replicas_on_the_running_stream_is_drift_that_is_not_applied_by_a_client() -> None:
    drift = stream_drift(wanted(replicas=1), wanted(replicas=3))
    assert [(d.field, d.running, d.wanted) for d in drift] == [("num_replicas", 3, 1)]
    assert with_additions(wanted(replicas=3), drift) is None


def test_a_higher_limit_on_the_running_stream_is_reported_never_lowered() -> None:
    running = dataclasses.replace(wanted(), max_age=(wanted().max_age or 0) * 2 + 60, max_bytes=10**12)
    drift = stream_drift(wanted(), running)
    assert {d.field for d in drift} == {"max_age", "max_bytes"}
    assert with_additions(running, drift) is None


def test_missing_subjects_are_added_and_extra_running_ones_kept() -> None:
    running = dataclasses.replace(wanted(), subjects=["extra.>"])
    drift = stream_drift(wanted(), running)
    added = with_additions(running, drift)
    assert added is not None
    assert set(added.subjects or []) == {"extra.>", *RESULTS.subjects}
    assert stream_drift(wanted(), added) == []


def test_subjects_beyond_ours_on_a_running_stream_are_not_drift() -> None:
    running = dataclasses.replace(wanted(), subjects=[*RESULTS.subjects, "extra.>"])
    assert stream_drift(wanted(), running) == []


def test_a_feature_switched_on_is_added_but_never_switched_off() -> None:
    on = dataclasses.replace(wanted(), allow_msg_schedules=True)
    off = dataclasses.replace(wanted(), allow_msg_schedules=None)
    drift_up = stream_drift(on, off)
    added = with_additions(off, drift_up)
    assert added is not None and added.allow_msg_schedules is True
    drift_down = stream_drift(off, on)
    assert [d.field for d in drift_down] == ["allow_msg_schedules"]
    assert with_additions(on, drift_down) is None


def test_the_addition_keeps_everything_else_of_the_running_stream() -> None:
    running = dataclasses.replace(wanted(replicas=3), subjects=[], max_bytes=10**12)
    added = with_additions(running, stream_drift(wanted(), running))
    assert added is not None
    assert (added.num_replicas, added.max_bytes) == (3, 10**12)
