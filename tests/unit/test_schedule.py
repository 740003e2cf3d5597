"""The daemon's schedule on its own, with a fake clock: due times, backoff, forced runs, quiet environments."""
from __future__ import annotations

import pytest

from reconciler.service.schedule import Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_new_revision_runs_every_environment_then_each_waits_its_own_interval(clock: Clock) -> None:
    schedule = Schedule(clock)
    assert schedule.due(["a", "b"], "r1") == ["a", "b"]
    schedule.finished("a", "r1", failed=False, interval=10)
    schedule.finished("b", "r1", failed=False, interval=60)

    clock.now += 9
    assert schedule.due(["a", "b"], "r1") == []
    clock.now += 1
    assert schedule.due(["a", "b"], "r1") == ["a"]
    schedule.finished("a", "r1", failed=False, interval=10)
    assert schedule.due(["a", "b"], "r2") == ["a", "b"]  # a new revision: at once, whatever the interval


def test_a_running_environment_is_never_started_twice(clock: Clock) -> None:
    schedule = Schedule(clock)
    assert schedule.due(["a"], "r1") == ["a"]
    schedule.force(["a"])
    assert schedule.due(["a"], "r2") == []  # still running: not even a new revision or a webhook starts it
    schedule.cancelled("a")
    assert schedule.due(["a"], "r2") == ["a"]


def test_errors_back_off_exponentially_up_to_the_cap_and_a_success_resets(clock: Clock) -> None:
    schedule = Schedule(clock, max_backoff=30)
    waits = []
    for _ in range(5):
        assert schedule.due(["a"], "r1") == ["a"]
        schedule.finished("a", "r1", failed=True, interval=60)
        waits.append(schedule.sleep(poll_interval=3600))
        clock.now += waits[-1]
    assert waits == [5, 10, 20, 30, 30]

    assert schedule.due(["a"], "r1") == ["a"]
    schedule.finished("a", "r1", failed=False, interval=60)
    assert schedule.sleep(poll_interval=3600) == 60


def test_an_error_may_say_when_to_retry(clock: Clock) -> None:
    schedule = Schedule(clock)
    schedule.due(["a"], "r1")
    schedule.finished("a", "r1", failed=True, interval=60, retry_after=2.5)
    assert schedule.sleep(poll_interval=30) == 2.5


def test_forced_ones_run_now_and_a_running_one_again_right_after(clock: Clock) -> None:
    schedule = Schedule(clock)
    schedule.due(["a", "b"], "r1")
    schedule.finished("a", "r1", failed=False, interval=3600)

    schedule.force(["a", "b"])  # b is still running
    assert schedule.due(["a", "b"], "r1") == ["a"]
    assert schedule.finished("b", "r1", failed=False, interval=3600) is True  # wake the loop: b is owed a run
    assert schedule.due(["a", "b"], "r1") == ["b"]
    assert schedule.finished("b", "r1", failed=False, interval=3600) is False


def test_the_loop_sleeps_the_poll_interval_or_until_the_soonest_due_environment(clock: Clock) -> None:
    schedule = Schedule(clock)
    assert schedule.sleep(poll_interval=30) == 30
    schedule.due(["a"], "r1")
    schedule.finished("a", "r1", failed=False, interval=4)
    assert schedule.sleep(poll_interval=30) == 4
    clock.now += 10
    assert schedule.sleep(poll_interval=30) == 0.2  # overdue: a short pause, never a busy loop


def test_ready_once_every_selected_environment_ran(clock: Clock) -> None:
    schedule = Schedule(clock)
    assert not schedule.reconciled([])
    schedule.due(["a", "b"], "r1")
    schedule.finished("a", "r1", failed=True, interval=10)
    assert not schedule.reconciled(["a", "b"])
    schedule.finished("b", "r1", failed=False, interval=10)
    assert schedule.reconciled(["a", "b"])


def test_an_advanced_environment_keeps_its_due_time_at_the_new_revision(clock: Clock) -> None:
    schedule = Schedule(clock)
    assert schedule.due(["a", "b"], "r1") == ["a", "b"]
    for name in ("a", "b"):
        schedule.finished(name, "r1", failed=False, interval=60)
    schedule.advance(["a"], "r2")  # nothing a reads changed at r2
    assert schedule.at("a") == "r2" and schedule.at("b") == "r1" and schedule.at("c") is None
    assert schedule.due(["a", "b"], "r2") == ["b"]
    schedule.finished("b", "r2", failed=False, interval=60)
    clock.now += 60
    assert schedule.due(["a", "b"], "r2") == ["a", "b"]  # its own interval still runs it


def test_a_quiet_environment_skips_its_intervals_until_the_resync_unless_forced(clock: Clock) -> None:
    from reconciler.service.schedule import RESYNC
    schedule = Schedule(clock)
    assert schedule.due(["quiet", "loud"], "r1") == ["quiet", "loud"]
    schedule.finished("quiet", "r1", failed=False, interval=10, quiet=True)
    schedule.finished("loud", "r1", failed=False, interval=10)
    ran = []
    for _ in range(int(RESYNC // 10) - 1):
        clock.now += 10
        started = schedule.due(["quiet", "loud"], "r1")
        ran += started
        for name in started:
            schedule.finished(name, "r1", failed=False, interval=10, quiet=name == "quiet")
    assert "quiet" not in ran and ran.count("loud") == int(RESYNC // 10) - 1
    assert schedule.skipped == ["quiet"] * (int(RESYNC // 10) - 1)  # what the daemon counts
    assert schedule.sleep(60) == pytest.approx(10)  # skipped intervals re-arm: no busy loop
    schedule.finished("loud", "r1", failed=False, interval=10, quiet=True)
    assert schedule.sleep(60) == 60  # only quiet ones: they wait for the next poll turn

    schedule.force(["quiet"])  # a watch saw someone else change it
    assert schedule.due(["quiet", "loud"], "r1") == ["quiet"]
    schedule.finished("quiet", "r1", failed=False, interval=10, quiet=True)
    clock.now += RESYNC
    assert "quiet" in schedule.due(["quiet", "loud"], "r1")  # the resync: a lost watch event is caught
    schedule.finished("quiet", "r1", failed=True, interval=10, quiet=True)  # a failure is never quiet
    clock.now += 10
    assert schedule.due(["quiet"], "r1") == ["quiet"]
    assert schedule.due(["other"], "r2") == ["other"]  # a new revision: never skipped
