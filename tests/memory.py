"""An in-memory target for pipeline tests on real Git, and a pipeline built around any target."""
from __future__ import annotations

import copy
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.errors import Unreachable
from reconciler.metrics import Metrics
from reconciler.model import (
    Action,
    EnvironmentSpec,
    LedgerSnapshot,
    LiveObject,
    ObjectRef,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    job_submission_id,
)
from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import Pipeline
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.target import ApplyContext, Observation, RunReport, Target
from reconciler.targets import TYPES, Registry, Runtime, TargetType


class MemoryTarget:
    """Stores applied manifests; jobs finish as soon as they are submitted; can be told to fail (one object,
    or everything as unreachable). With
    `reports_deleted_runs`, a pending run whose RayJob is gone is reported DELETED (as on Kubernetes)."""

    kind = "local"

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, LiveObject] = {}
        self.failing: set[str] = set()
        self.unreachable = False
        self.calls: list[tuple[str, str]] = []
        self.saved: dict[str, LedgerSnapshot] = {}
        self.reports_deleted_runs = False
        self.warnings: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, str, str]] = []  # (name, reason, message)

    def observe(self, rendered: RenderedEnvironment, refs: set[ObjectRef],
                pending_runs: frozenset[str]) -> Observation:
        live = {ref: self.objects[ref] for ref in refs if ref in self.objects}
        deleted = [RunReport(run, d.ref.name, "DELETED") for d in rendered.objects
                   if self.reports_deleted_runs and d.ref.kind == "RayJob" and d.ref not in live
                   and (run := job_submission_id(rendered.spec.name, d.ref.name, d.manifest)) in pending_runs]
        return Observation(live, tuple(deleted))

    def expected(self, rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, dict]:
        return {d.ref: d.manifest for d in rendered.objects if d.ref in live}

    def apply(self, item: PlanItem, context: ApplyContext) -> Outcome:
        self.calls.append((item.action.value, item.ref.name))
        if self.unreachable:
            raise Unreachable(f"{item.ref}: connection refused")
        if item.ref.name in self.failing:
            raise RuntimeError("refused by the target")
        if item.action == Action.DELETE:
            del self.objects[item.ref]
            return Outcome.DELETED
        assert item.desired is not None
        status = {"state": "ready"}
        if item.ref.kind == "RayJob":
            status = {"jobId": job_submission_id(context.environment, item.ref.name, item.desired.manifest),
                      "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete", "startTime": 100.0,
                      "endTime": 112.5}
        self.objects[item.ref] = LiveObject(item.ref, copy.deepcopy(item.desired.manifest), status)
        return Outcome.CREATED

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext,
                     reason: str = "") -> None:
        self.events.append((item.ref.name, reason or outcome.value, message))

    def report_warning(self, spec: EnvironmentSpec, reason: str, message: str) -> None:
        self.warnings.append((spec.name, reason, message))

    def load_ledger(self, spec: EnvironmentSpec) -> LedgerSnapshot | None:
        return self.saved.get(spec.name)

    def save_ledger(self, spec: EnvironmentSpec, snapshot: LedgerSnapshot) -> None:
        self.saved[spec.name] = snapshot

    def drop_ledger(self, spec: EnvironmentSpec) -> None:
        self.saved.pop(spec.name, None)

    def close(self, workloads: bool) -> None:
        pass


TARGETS = Registry(Runtime(Path("."), Metrics(CollectorRegistry())))  # for render: parses options, builds none


def registry(target: Target, state_dir: Path, metrics: Metrics | None = None) -> Registry:
    """The real registry, whose `local` kind builds `target` (the local options, kinds and checks stay)."""
    local = TYPES["local"]
    types = {**TYPES, "local": TargetType("local", local.options, local.kinds, lambda options, runtime: target,
                                          local.check)}
    return Registry(Runtime(state_dir, metrics or Metrics(CollectorRegistry())), types)


def pipeline(source: GitSource, state_dir: Path, target: Target, metrics: Metrics | None = None) -> Pipeline:
    """A pipeline over `source` whose local environments go to `target`, with its ledger in `state_dir`."""
    metrics = metrics or Metrics(CollectorRegistry())
    return Pipeline(source, Ledger(state_dir), metrics, registry(target, state_dir, metrics),
                    checkouts=state_dir / "checkouts")
