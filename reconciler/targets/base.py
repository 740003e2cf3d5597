"""The Target protocol: what every target (local Ray, Kubernetes) offers the reconcile stage.

A target observes live objects, applies one plan item at a time and reports an `Outcome`.
It never decides *what* to change (the planner does) and never touches the ledger.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..model import EnvironmentSpec, LedgerSnapshot, LiveObject, Manifest, ObjectRef, Outcome, PlanItem, RenderedEnvironment


@dataclass(frozen=True)
class ApplyContext:
    """What an apply may need beyond the plan item: the revision and its files on disk."""

    environment: str
    revision: str
    materialize: Callable[[str], Path]  # repository path -> exported directory of that revision


class Target(Protocol):
    """A place where environments live."""

    kind: str
    vanished_runs_are_final: bool  # True: a submitted RayJob that disappeared is never re-created

    def observe(self, env: RenderedEnvironment, refs: set[ObjectRef]) -> dict[ObjectRef, LiveObject]:
        """Live state of `refs` (objects not found are absent from the result)."""

    def expected(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, Manifest]:
        """Each desired object that exists live, as the target would store it if applied now (Kubernetes:
        a server-side dry-run apply, so CRD defaults and quantity formats never show as drift)."""

    def apply(self, item: PlanItem, context: ApplyContext) -> Outcome:
        """Carry out one plan item (create/update/recreate/delete/submit); raise on failure."""

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext) -> None:
        """Tell the target's users what was done to an object (Kubernetes: an Event); never raises."""

    def load_ledger(self, env: EnvironmentSpec) -> LedgerSnapshot | None:
        """The environment's ledger as the target keeps it (None: the target keeps none)."""

    def save_ledger(self, env: EnvironmentSpec, snapshot: LedgerSnapshot) -> None:
        """Persist the ledger on the target (called only when it changed)."""

    def close(self, environment: str | None = None) -> None:
        """Release what the target holds (for one environment, or all)."""
