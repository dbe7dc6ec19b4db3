"""The workload benchmark's own foresight: which effects each planned change is timed for."""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks.shapes import Change, SecretPlan, Shape, Sweep, SweepStep, plan_changes, plan_shape
from services.common.settings import Settings
from services.evaluator.status import DEFAULT_STATUS_CAP

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_a_capped_status_is_looked_at_only_for_a_change_that_lands_well_inside_the_cap() -> None:
    plan = plan_shape(Shape("t", 1, 1, 40), NOW)  # 2 expired, 4 expiring within 30 days, 34 valid
    changes = plan_changes(plan, 4, status_cap=10, now=NOW)
    # three renewals a year ahead (last of 40), then one expiring in 13 days (fourth most urgent)
    assert [("status" in c.due) for c in changes] == [False, False, False, True]
    assert all("annotation" in c.due for c in changes)


def test_a_status_that_lists_every_certificate_is_looked_at_for_every_change() -> None:
    plan = plan_shape(Shape("t", 1, 1, 40), NOW)
    changes = plan_changes(plan, 4, status_cap=40, now=NOW)
    assert all("status" in c.due for c in changes)


def test_the_status_cap_setting_defaults_to_what_the_evaluator_lists() -> None:
    assert Settings().status_cap == DEFAULT_STATUS_CAP


def seen_after(milliseconds: list[float]) -> list[Change]:
    secret = SecretPlan("ns", "s", {}, "check", NOW)
    return [Change(secret, NOW, ("annotation",), seen={"annotation": ms / 1000}) for ms in milliseconds]


def test_a_swept_rate_whose_p99_grew_past_three_times_the_lowest_rates_is_not_sustained() -> None:
    sweep = Sweep([25, 50, 100], duration=10, p99_limit=1000)
    sweep.steps = [
        SweepStep(25, seen_after([10] * 99 + [20]), (0, 0), {"a": 3.0, "b": 1.0}, 10.0),
        SweepStep(50, seen_after([12] * 99 + [50]), (0, 0)),
        SweepStep(100, seen_after([12] * 98 + [111, 120]), (0, 0)),
    ]
    assert [sweep.verdict(step) for step in sweep.steps] == ["yes", "yes", "no: p99 > 3x the lowest rate's"]
    assert sweep.highest == 50
    assert sweep.steps[0].cores == "0.30 0.10"  # CPU seconds over the step's own span
