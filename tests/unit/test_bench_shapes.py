"""The workload benchmark's own foresight: which effects each planned change is timed for."""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks.shapes import Shape, plan_changes, plan_shape
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
