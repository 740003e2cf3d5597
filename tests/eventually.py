"""The one polling helper of the test suite: wait for a condition that becomes true on its own (a daemon, a
thread, Ray or the API server doing its work), and on timeout fail with what was last seen."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2,
               message: str | Callable[[], str] = "the condition") -> T:
    """Call `check` until it returns a truthy value without raising AssertionError, and return that value.

    A check may return a value (`lambda: plan["status"] == "ready"`) or assert (then it ends in `return True`).
    Any other exception ends the wait at once (a daemon that exited fails by `pytest.fail`, not by a timeout).
    On timeout the AssertionError names `message` (a callable is asked only then: a log tail) and the last
    value returned or the last assertion raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except AssertionError as failed:
            last = f"last assertion: {failed}"
        else:
            if value:
                return value
            last = f"last value: {value!r}"
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}; {last}")
        time.sleep(interval)
