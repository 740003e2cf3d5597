"""When each environment is reconciled: pure bookkeeping with an injected clock, no threads, no I/O.

The daemon's main loop asks `due()` at every turn and reports back with `finished()`. An
environment runs at once for a new revision (unless the daemon `advance`d it there: nothing it reads
changed), else every `interval` (its `spec.interval`) after its last reconcile; after errors it backs
off exponentially (5 s doubling, at most `max_backoff`) or waits what the error asks (`retry_after`).
A quiet environment (it was Synced and its target watches it, statuses included: `reconcile._quiet`)
skips its interval's reconcile until RESYNC has passed since its last one: a watch or Git `force`s
it sooner. `force` runs an environment at once, or right after its running reconcile ends. One
environment never runs twice at the same time.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

FIRST_BACKOFF = 5.0
RESYNC = 600.0  # seconds: a quiet environment is still reconciled this often (a watch event may be lost)


@dataclass
class Schedule:
    """The due times of the environments, and which ones are running."""

    clock: Callable[[], float] = time.monotonic
    max_backoff: float = 300.0
    _due: dict[str, tuple[str, float]] = field(default_factory=dict)  # env -> (revision reconciled, next time)
    _failures: dict[str, int] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _forced: set[str] = field(default_factory=set)
    _done: set[str] = field(default_factory=set)  # reconciled at least once
    _quiet: dict[str, tuple[float, float]] = field(default_factory=dict)  # env -> (last reconcile ended, interval)
    skipped: list[str] = field(default_factory=list)  # quiet environments whose interval `due` skipped (to count)

    def force(self, names: Iterable[str]) -> None:
        """Run these at once whatever their interval (after the current run, for a running one)."""
        self._forced.update(names)

    def due(self, names: Iterable[str], revision: str) -> list[str]:
        """The environments to start now (they count as running until `finished` or `cancelled`)."""
        now, started = self.clock(), []
        for name in names:
            if name in self._running:
                continue
            done, next_time = self._due.get(name, ("", 0.0))
            if done == revision and name not in self._forced:
                if now < next_time:
                    continue
                if name in self._quiet and now - self._quiet[name][0] < RESYNC:  # nothing moved: nothing to do
                    self._due[name] = (revision, now + self._quiet[name][1])
                    self.skipped.append(name)
                    continue
            self._forced.discard(name)
            self._running.add(name)
            started.append(name)
        return started

    def finished(self, name: str, revision: str, failed: bool, interval: float,
                 retry_after: float | None = None, quiet: bool = False) -> bool:
        """Record a finished reconcile; True when it was forced again meanwhile (wake the loop)."""
        self._running.discard(name)
        failures = self._failures[name] = self._failures.get(name, 0) + 1 if failed else 0
        delay = (retry_after or min(self.max_backoff, FIRST_BACKOFF * 2 ** (failures - 1))) if failures else interval
        self._due[name] = (revision, self.clock() + delay)
        self._done.add(name)
        if quiet and not failed:
            self._quiet[name] = (self.clock(), interval)
        else:
            self._quiet.pop(name, None)
        return name in self._forced

    def next_time(self, name: str) -> float:
        """When `name` is due next (by the clock; 0 when it never ran)."""
        return self._due.get(name, ("", 0.0))[1]

    def advance(self, names: Iterable[str], revision: str) -> None:
        """`names` are on `revision` without a reconcile (nothing they read changed): their next one stays due
        when it was."""
        for name in names:
            if name in self._due:
                self._due[name] = (revision, self._due[name][1])

    def at(self, name: str) -> str | None:
        """The revision `name` was last reconciled (or advanced) at; None before its first reconcile."""
        return self._due[name][0] if name in self._due else None

    def cancelled(self, name: str) -> None:
        """A queued reconcile that never ran (leadership lost, stopping)."""
        self._running.discard(name)

    def sleep(self, poll_interval: float) -> float:
        """Seconds until the next turn: the Git poll interval, or less when an environment that is not quiet is due
        sooner (quiet ones wait for a turn: a thousand of them never wake the loop one by one)."""
        soonest = min((t for n, (_, t) in self._due.items() if n not in self._quiet), default=float("inf")) \
            - self.clock()
        return max(0.2, min(poll_interval, soonest))

    def reconciled(self, names: Iterable[str]) -> bool:
        """Every one of `names` was reconciled at least once (and there is at least one)."""
        wanted = set(names)
        return bool(wanted) and wanted <= self._done
