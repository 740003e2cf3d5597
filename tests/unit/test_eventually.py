"""The suite's one polling helper: returns the first truthy value, retries assertions, fails with the last one."""
from __future__ import annotations

import itertools

import pytest

from tests.eventually import eventually


def test_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, {}, {"status": "ready"}])
    assert eventually(lambda: next(values), timeout=5, interval=0) == {"status": "ready"}


def test_an_assertion_is_retried_until_it_holds() -> None:
    calls = itertools.count()

    def third_time() -> bool:
        assert next(calls) >= 2, "not yet"
        return True
    assert eventually(third_time, timeout=5, interval=0) is True


@pytest.mark.parametrize(("check", "last"), [
    pytest.param(lambda: [], "last value: []", id="falsy value"),
    pytest.param(lambda: (_ for _ in ()).throw(AssertionError("replicas 1 != 2")),
                 "last assertion: replicas 1 != 2", id="assertion"),
])
def test_a_timeout_names_the_message_and_the_last_value_or_assertion(check, last: str) -> None:
    with pytest.raises(AssertionError, match="waiting for the plan to be ready") as failed:
        eventually(check, timeout=0.05, interval=0.01, message="the plan to be ready")
    assert last in str(failed.value)


def test_a_message_callable_is_asked_only_on_timeout() -> None:
    asked: list[str] = []

    def message() -> str:
        asked.append("log tail")
        return "log tail"
    assert eventually(lambda: True, timeout=1, message=message)
    assert asked == []
    with pytest.raises(AssertionError, match="log tail"):
        eventually(lambda: False, timeout=0.01, interval=0.005, message=message)


def test_another_exception_ends_the_wait_at_once() -> None:
    calls = itertools.count()

    def broken() -> bool:
        next(calls)
        raise KeyError("status")
    with pytest.raises(KeyError):
        eventually(broken, timeout=5, interval=0)
    assert next(calls) == 1
