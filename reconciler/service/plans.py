"""Pending plans for the status page: `Pipeline.preview` of an environment at the fetched branch head
(what `ray-gitops diff -o json` prints), cached per environment and revision.

A preview asks the target for live state, so it is computed only when the page asks for it, on the
page's worker thread (never in an HTTP thread, one at a time), never while that environment
reconciles (both hold the daemon's lock of the environment), and again only after a reconcile of
that environment reported since, at most once every MIN_AGE seconds. Diffs are bounded in size.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RayGitopsError
from ..model import Action, PlanItem
from ..pipeline.reconcile import Preview
from ..pipeline.source import Revision
from .worker import Worker

log = logging.getLogger(__name__)
MIN_AGE = 10.0  # seconds a plan is kept even when its environment reconciled since
MAX_DIFF = 64 * 1024  # characters of one object's diff; `ray-gitops diff` shows all of it
MAX_DIFFS = 1024 * 1024  # characters of all diffs of one plan
TRUNCATED = "\n... (cut here; `ray-gitops diff` shows the whole diff)\n"


@dataclass(frozen=True)
class Plan:
    """One environment's plan at one revision, as `diff -o json` items (no-op items included)."""

    environment: str
    revision: str
    computed_at: float  # Unix time
    reconciled_at: float  # the environment's last report (ledger `updated_at`) when it was computed
    items: tuple[dict[str, Any], ...] = ()
    error: str = ""  # the preview failed (an invalid environment, an unreachable target)


class Plans:
    """The newest plan of each environment, computed on `worker`."""

    def __init__(self, worker: Worker, preview: Callable[[str, Revision], Preview],
                 head: Callable[[], Revision | None], guard: Callable[[str], threading.Lock],
                 reconciled_at: Callable[[str], float], clock: Callable[[], float] = time.time) -> None:
        self._worker, self._preview, self._head, self._guard = worker, preview, head, guard
        self._reconciled_at, self._clock = reconciled_at, clock
        self._cache: dict[str, Plan] = {}
        self._lock = threading.Lock()

    def peek(self, name: str) -> Plan | None:
        """The cached plan of `name`, whatever its age; computes nothing."""
        with self._lock:
            return self._cache.get(name)

    def get(self, name: str, reconciled_at: float) -> tuple[Plan | None, bool]:
        """(the cached plan, whether it is current). When it is not (none yet, an older revision, or a
        reconcile reported since and it is MIN_AGE old), a new one is asked of the worker. Never waits."""
        head, plan = self._head(), self.peek(name)
        current = plan is not None and head is not None and plan.revision == head.sha and (
            plan.reconciled_at >= reconciled_at or self._clock() - plan.computed_at < MIN_AGE)
        if head is not None and not current:
            self._worker.submit(("plan", name), lambda: self._compute(name))
        return plan, current

    def _compute(self, name: str) -> bool:
        """Preview `name` at the head; False (try later) while the environment reconciles."""
        head = self._head()
        if head is None:
            return True
        guard = self._guard(name)
        if not guard.acquire(blocking=False):
            return False
        try:
            reconciled_at = self._reconciled_at(name)
            try:
                plan = Plan(name, head.sha, self._clock(), reconciled_at, items(self._preview(name, head).items))
            except RayGitopsError as exc:
                plan = Plan(name, head.sha, self._clock(), reconciled_at, error=str(exc))
            except Exception as exc:  # a target's failure is the plan's answer, not the worker's end
                log.warning("status page: plan of environment %s failed: %s: %s", name, type(exc).__name__, exc)
                plan = Plan(name, head.sha, self._clock(), reconciled_at, error=f"{type(exc).__name__}: {exc}")
        finally:
            guard.release()
        with self._lock:
            self._cache[name] = plan
        return True


def items(plan: Sequence[PlanItem]) -> tuple[dict[str, Any], ...]:
    """Plan items as `ray-gitops diff -o json` prints them (no-op items kept, without a diff); each diff
    at most MAX_DIFF characters and all of them MAX_DIFFS. Secret values are digests already."""
    out, budget = [], MAX_DIFFS
    for item in plan:
        diff = "" if item.action == Action.NOOP else item.diff
        room = min(MAX_DIFF, budget)
        if len(diff) > room:
            diff = diff[:room] + TRUNCATED
        budget = max(0, budget - len(diff))
        out.append(item.as_json(diff))
    return tuple(out)
