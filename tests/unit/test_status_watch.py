"""Whether each status says what its CertCheck's last result told: which checks come due, and when."""

from __future__ import annotations

import asyncio

import msgspec

from schemas.messages import CertCheckStatus, NotificationFailure
from services.evaluator.statuswatch import CHECK_CAP_SECONDS, StatusWatch, Told, status_digest

KEY = ("ns", "c")
DELAY = 0.02
TOLD = CertCheckStatus(target_certs_count=2, valid_count=2, last_evaluation_time="2026-12-07T10:00:00Z")
OLDER = CertCheckStatus(
    target_certs_count=2, expiring_soon_count=2, last_evaluation_time="2026-12-07T09:00:00Z"
)


def watched(changed: bool = True) -> tuple[StatusWatch, list[int]]:
    wakes: list[int] = []
    watch = StatusWatch(lambda: wakes.append(1), DELAY)
    watch.told(KEY, 7, "uid-c", TOLD, changed)
    return watch, wakes


async def after_the_delay() -> None:
    await asyncio.sleep(DELAY * 3)


def test_a_status_written_and_back_as_told_needs_no_check() -> None:
    async def run() -> None:
        watch, wakes = watched()
        watch.came_back(KEY, "uid-c", TOLD)
        await after_the_delay()
        assert (wakes, watch.take_due()) == ([], {})

    asyncio.run(run())


def test_a_status_not_back_as_told_in_time_comes_due_with_what_was_told() -> None:
    async def run() -> None:
        watch, wakes = watched()
        watch.came_back(KEY, "uid-c", OLDER)  # an older write coming back: nothing said yet
        assert watch.take_due() == {}
        await after_the_delay()
        due = watch.take_due()
        assert wakes == [1] and list(due) == [KEY] and due[KEY].seq == 7
        assert not due[KEY].as_told("uid-c", OLDER) and due[KEY].as_told("uid-c", TOLD)

    asyncio.run(run())


def test_a_status_changed_back_after_it_was_as_told_comes_due() -> None:
    async def run() -> None:
        watch, wakes = watched()
        watch.came_back(KEY, "uid-c", TOLD)
        await after_the_delay()
        watch.came_back(KEY, "uid-c", OLDER)  # a late write of an older result, or an edit by hand
        await after_the_delay()
        assert wakes == [1] and list(watch.take_due()) == [KEY]

    asyncio.run(run())


def test_a_result_that_leaves_the_status_as_it_is_asks_for_no_check_until_the_status_changes() -> None:
    async def run() -> None:
        watch, wakes = watched(changed=False)
        await after_the_delay()
        assert wakes == []
        watch.came_back(KEY, "uid-c", OLDER)
        await after_the_delay()
        assert wakes == [1]

    asyncio.run(run())


def test_a_newer_result_replaces_the_check_of_the_one_before() -> None:
    async def run() -> None:
        watch, wakes = watched()
        newer = msgspec.structs.replace(TOLD, valid_count=1, expired_count=1)
        watch.told(KEY, 9, "uid-c", newer, True)
        watch.came_back(KEY, "uid-c", newer)
        await after_the_delay()
        assert (wakes, watch.take_due()) == ([], {})

    asyncio.run(run())


def test_checks_that_keep_finding_the_status_not_as_told_come_less_often_until_it_is() -> None:
    def wait_of(told: Told) -> float:
        assert told.check is not None
        return told.check.when() - asyncio.get_running_loop().time()

    async def run() -> None:
        watch, wakes = watched()
        await after_the_delay()
        told = watch.take_due()[KEY]
        watch.check_again(KEY, told)
        assert DELAY * 1.5 < wait_of(told) <= DELAY * 2
        watch.check_again(KEY, told)
        assert DELAY * 3 < wait_of(told) <= DELAY * 4
        watch.told(KEY, 8, "uid-c", TOLD, True)  # the evaluation this called for: still less often
        assert DELAY * 3 < wait_of(watch._told[KEY]) <= DELAY * 4
        watch.came_back(KEY, "uid-c", TOLD)
        assert watch._told[KEY].misses == 0 and watch._told[KEY].check is None
        assert wakes == [1]

    asyncio.run(run())


def test_the_checks_back_off_to_a_cap() -> None:
    async def run() -> None:
        watch, _ = watched()
        told = watch._told[KEY]
        told.misses = 40
        watch.check_again(KEY, told)
        assert told.check is not None
        assert told.check.when() - asyncio.get_running_loop().time() <= CHECK_CAP_SECONDS
        watch.close()
        assert told.check.cancelled() and len(watch) == 0

    asyncio.run(run())


def test_a_forgotten_or_re_created_certcheck_is_not_checked() -> None:
    async def run() -> None:
        watch, wakes = watched()
        watch.forget(KEY)
        watch.told(("ns", "other"), 3, "uid-o", TOLD, True)
        watch.came_back(("ns", "other"), "uid-new", OLDER)  # another CertCheck of that name
        await after_the_delay()
        assert (wakes, watch.take_due()) == ([], {})

    asyncio.run(run())


def test_the_notifiers_field_is_not_part_of_what_was_told() -> None:
    failing = msgspec.structs.replace(
        TOLD, notification_failures=[NotificationFailure(target="hook", reason="HTTP 500", since="x")]
    )
    assert status_digest(failing) == status_digest(TOLD) != status_digest(OLDER)
    assert status_digest(None) == b""
