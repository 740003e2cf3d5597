"""Render budgets: what rendering one environment may spend, so that hostile Git content ends in an error
before memory or CPU time grow.

`render` makes one `Budget` per environment and hands it to the parser, the overlays and validation; each
spends where the work happens (a value built, a patch value inserted, a substituted string), *before*
allocating, and turns `Exhausted` into an error naming its file and field. No I/O; the only clock is this
thread's CPU time.
"""
from __future__ import annotations

import time
from typing import Any

MAX_DOCUMENTS = 1_000  # YAML documents in one environment's object files (so at most 1,000 objects)
MAX_BYTES = 8 * 1024 * 1024  # what one environment's objects come to, counted as `size` counts
MAX_STRING_BYTES = 1024 * 1024  # one string value after substitution
MAX_CPU_SECONDS = 10.0  # CPU time of the rendering thread for one environment
MAX_REPORTED = 50  # fields of one object named for one kind of error (undefined variable, non-string value)
VALUE_BYTES = 8  # what every key and value counts on top of its text (a map of empty maps is not free)
_CLOCK_EVERY = 4096  # spends between two looks at the CPU clock


class Exhausted(Exception):
    """A budget ran out; `reason` says which, for the error of the file or field being rendered."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Budget:
    """Documents, bytes and CPU time left to one environment's render. Once one runs out, `exhausted` says
    why, and the render stops at that first error instead of piling up more work."""

    def __init__(self) -> None:
        self.documents = MAX_DOCUMENTS
        self.bytes = MAX_BYTES
        self.deadline = time.thread_time() + MAX_CPU_SECONDS
        self.exhausted = ""  # why it ran out, once it has
        self._spends = 0

    def read(self, documents: int) -> None:
        """Count the documents of one more object file."""
        self.documents -= documents
        if self.documents < 0:
            self._fail(f"more than {MAX_DOCUMENTS} YAML documents in the environment's object files (its base's "
                       "included, an empty one counts too): split it into several environments")

    def spend(self, size: int) -> None:
        """Take `size` bytes (before building what they measure); look at the clock now and then."""
        self.bytes -= size
        if self.bytes < 0:
            self._fail(f"the environment's objects come to more than {MAX_BYTES} bytes (each key and value counts "
                       f"its text and {VALUE_BYTES} more; aliases, patches and substitutions count what they add)")
        self._spends += 1
        if self._spends % _CLOCK_EVERY == 0:
            self.check_time()

    def check_time(self) -> None:
        if time.thread_time() > self.deadline:
            self._fail(f"rendering took more than {MAX_CPU_SECONDS:g} s of CPU time")

    def _fail(self, reason: str) -> None:
        self.exhausted = reason
        raise Exhausted(reason)


def measure(value: Any, limit: int) -> tuple[int, int]:
    """What `value` counts (the text of every string and key, and `VALUE_BYTES` per key and value) and how
    many levels of lists and maps it nests, walking no further once past `limit` bytes: both are exact up to
    `limit`, and the count is above `limit` when the value is larger."""
    total, height, todo = 0, 0, [(value, 0)]
    while todo and total <= limit:
        node, depth = todo.pop()
        total += VALUE_BYTES
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            height = max(height, depth + 1)
            total += sum(VALUE_BYTES + len(key) for key in node)
            todo.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            height = max(height, depth + 1)
            todo.extend((child, depth + 1) for child in node)
    return total, height
