"""The restart rules of services/common/runtime.py, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from services.common import runtime


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.now += delay


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(runtime.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(runtime.asyncio, "sleep", fake.sleep)
    return fake


def test_resilient_backs_off_while_failing_and_starts_over_after_a_healthy_run(clock: FakeClock) -> None:
    # fails at once three times, then runs a minute before failing, then once more at once, then ends
    runs = iter([0.0, 0.0, 0.0, 60.0, 0.0, None])

    async def work() -> None:
        lasted = next(runs)
        if lasted is None:
            return
        clock.now += lasted
        raise ConnectionError("bus gone")

    asyncio.run(runtime.resilient("loop", work))
    first, second, third = (runtime.backoff(n, runtime.RESILIENT_MAX_DELAY_SECONDS) for n in (1, 2, 3))
    assert clock.slept == [first, second, third, first, second]


def test_resilient_waits_at_most_its_cap_however_often_it_fails(clock: FakeClock) -> None:
    failures = iter(range(40))

    async def work() -> None:
        if next(failures) < 39:
            raise ConnectionError("bus gone")

    asyncio.run(runtime.resilient("loop", work))
    assert len(clock.slept) == 39
    assert max(clock.slept) == runtime.RESILIENT_MAX_DELAY_SECONDS
    assert clock.slept == sorted(clock.slept)


def test_a_failure_after_a_healthy_run_counts_as_the_first(clock: FakeClock) -> None:
    started = clock.now
    clock.now += runtime.RESTART_RESET_SECONDS
    assert runtime.failed_again(7, started) == 1
    assert runtime.failed_again(7, clock.now - 1) == 8
