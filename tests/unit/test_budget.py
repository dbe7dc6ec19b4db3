"""A mass rotation gives each namespace a burst of routine Secret Events, then one per refill period;
Warnings and CertCheck Events are never held back."""

from __future__ import annotations

from schemas.messages import EventIntent
from services.recorder.budget import EventBudget


def event(kind: str = "Secret", type_: str = "Normal", namespace: str = "ns", name: str = "s") -> EventIntent:
    return EventIntent(
        namespace=namespace,
        involved_api_version="v1",
        involved_kind=kind,
        involved_name=name,
        involved_uid=f"uid-{name}",
        type=type_,
        reason="Renewed" if type_ == "Normal" else "Expired",
        message="m",
        dedup_key=name,
    )


def test_a_namespace_gets_its_burst_of_renewals_then_one_per_refill_period() -> None:
    budget = EventBudget(burst=3, refill_seconds=10)
    allowed = [budget.allows(event(name=f"s{i}"), now=0.0) for i in range(5)]
    assert allowed == [True, True, True, False, False]
    assert not budget.allows(event(), now=9.0)
    assert budget.allows(event(), now=10.0)
    assert not budget.allows(event(), now=10.5)


def test_warnings_and_certcheck_events_are_never_held_back() -> None:
    budget = EventBudget(burst=1, refill_seconds=3600)
    assert budget.allows(event(), now=0.0)
    assert not budget.allows(event(), now=0.0)
    assert all(budget.allows(event(type_="Warning"), now=0.0) for _ in range(100))
    assert all(budget.allows(event(kind="CertCheck"), now=0.0) for _ in range(100))


def test_each_namespace_has_its_own_budget() -> None:
    budget = EventBudget(burst=1, refill_seconds=3600)
    assert budget.allows(event(namespace="a"), now=0.0)
    assert not budget.allows(event(namespace="a"), now=0.0)
    assert budget.allows(event(namespace="b"), now=0.0)


def test_a_burst_of_zero_holds_nothing_back() -> None:
    budget = EventBudget(burst=0)
    assert all(budget.allows(event(), now=0.0) for _ in range(100))
