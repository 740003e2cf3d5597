"""What a reconcile of one environment would do, without doing it: fetch -> render -> observe -> plan.

Called by the `diff` and `plan` commands (one code path for both); applies, prunes and records
nothing. Errors propagate as `ReconcileError`/`InvalidEnvironment` for the CLI to print.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from . import planner
from .config import Settings
from .daemon import build_target
from .ledger import Ledger
from .metrics import Metrics
from .model import Action, PlanItem
from .render import render
from .source import GitSource, Revision


@dataclass(frozen=True)
class Preview:
    """The plan for one environment at the branch's head."""

    environment: str
    revision: Revision
    items: list[PlanItem]

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action not in (Action.NOOP, Action.SKIP)]


def preview(settings: Settings, environment: str) -> Preview:
    source = GitSource(settings.repo, settings.branch, settings.state_dir / "git")
    revision = source.fetch()
    env = render(revision.tree, environment, revision.sha)
    target = build_target(env.spec, settings, Metrics(CollectorRegistry()))
    try:
        ledger = Ledger(settings.state_dir)
        kept = target.load_ledger(env.spec)  # the cluster's copy (Kubernetes) is newer than a local one
        inventory = set(kept.inventory) if kept else ledger.inventory(env.spec.name)
        finished = {**ledger.finished_runs(env.spec.name), **{run: r for run, r in (kept.runs if kept else ()) if r}}
        live = target.observe(env, inventory | {d.ref for d in env.objects})
        items = planner.plan(env, live, inventory, finished, expected=target.expected(env, live))
    finally:
        if env.spec.target.kind != "local":  # a local target's close() stops clusters the daemon runs
            target.close()
    return Preview(env.spec.name, revision, items)
