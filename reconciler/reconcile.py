"""One reconcile of one environment: render -> observe -> plan -> apply -> observe -> report.

Called by the daemon (and `ray-gitops run --once`) for each environment, in its own thread.
Errors of one object do not stop the others; an invalid environment applies and prunes nothing
and keeps its last applied state. Everything it learns goes to the ledger and the metrics.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import health, planner
from .diff import cluster_spec
from .errors import InvalidEnvironment, ReconcileError, TemporaryError
from .ledger import EnvironmentState, Ledger
from .metrics import JOB_STATUSES, Metrics
from .model import (Action, EnvironmentSpec, Flag, LedgerSnapshot, LiveObject, ObjectRef, Outcome, PlanItem, RenderedEnvironment,
                    job_submission_id, spec_hash)
from .render import render
from .source import GitSource, Revision
from .targets.base import ApplyContext, Target

log = logging.getLogger(__name__)
CHANGES = {Action.CREATE, Action.UPDATE, Action.RECREATE, Action.DELETE, Action.SUBMIT}
CLUSTER_STATES = ("ready", "provisioning", "suspended", "failed")


@dataclass
class Result:
    """What one reconcile did and found."""

    environment: str
    result: str  # success | noop | error
    sync_status: str
    health_status: str
    message: str = ""
    outcomes: list[tuple[PlanItem, Outcome]] = field(default_factory=list)
    retry_after: float | None = None
    interval: float = 60.0


class Interrupted(TemporaryError):
    """The daemon is stopping: the rest of this reconcile is left for the next start."""


class EnvironmentReconciler:
    """Reconciles environments of one Git source onto their targets.

    Thread ownership: called from several environment threads at once, never twice at the same time
    for one environment (the daemon's scheduler guarantees it). It reads only the revision's immutable
    snapshot; per-environment entries of `_persisted` and `_said` are touched only by the thread
    reconciling that environment; the ledger, metrics and targets are thread-safe.
    """

    def __init__(self, source: GitSource, ledger: Ledger, metrics: Metrics, targets: TargetFactory,
                 options: planner.PlanOptions = planner.PlanOptions(),
                 stopping: threading.Event | None = None) -> None:
        self.source, self.ledger, self.metrics, self.targets, self.options = source, ledger, metrics, targets, options
        self.stopping = stopping or threading.Event()  # set: apply nothing more, leave the rest for later
        self._persisted: dict[str, LedgerSnapshot] = {}  # what each environment's target holds
        self._said: dict[str, set[str]] = {}  # per environment: skip reasons and warnings already logged

    def reconcile(self, name: str, revision: Revision) -> Result:
        started = time.monotonic()
        try:
            result = self._reconcile(name, revision)
        except Interrupted as exc:
            log.info("environment %s: %s", name, exc)
            return Result(name, "error", "Unknown", health.UNKNOWN, str(exc))
        except InvalidEnvironment as exc:
            log.error("%s", exc)
            result = self._failed(name, revision, "invalid environment: " + "; ".join(str(e) for e in exc.errors))
        except ReconcileError as exc:
            log.error("environment %s: %s", name, exc)
            result = self._failed(name, revision, str(exc), getattr(exc, "retry_after", None))
        except Exception as exc:  # a target or a bug: this environment fails, the others go on
            log.exception("environment %s: reconcile failed", name)
            result = self._failed(name, revision, f"{type(exc).__name__}: {exc}")
        self.metrics.reconcile_total.labels(name, result.result).inc()
        self.metrics.reconcile_duration.labels(name).observe(time.monotonic() - started)
        return result

    def _failed(self, name: str, revision: Revision, message: str, retry_after: float | None = None) -> Result:
        last = self.ledger.last_applied(name) or ""
        previous = next((s for s in self.ledger.states() if s.env == name), None)
        target = previous.target if previous else "unknown"
        health_status = previous.health_status if previous else health.UNKNOWN
        self.ledger.set_state(EnvironmentState(name, target, last, "Failed", health_status,
                                               f"revision {revision.short}: {message}"[:2000], time.time(),
                                               previous.detail if previous else {}))
        self.metrics.environment_status(name, target, last[:12], "Failed", health_status)
        return Result(name, "error", "Failed", health_status, message, retry_after=retry_after)

    def _reconcile(self, name: str, revision: Revision) -> Result:
        held = self.ledger.suspended(name)  # read every time: `ray-gitops suspend/resume` need no restart
        if held is not None:
            previous = next((s for s in self.ledger.states() if s.env == name), None)
            reason = "suspended by `ray-gitops suspend`" + (f": {held}" if held else "")
            return self._suspended(name, revision, previous.target if previous else "unknown", reason)
        env = render(revision.tree, name, revision.sha)
        target = self.targets.get(env)
        if env.spec.suspend:
            return self._suspended(name, revision, target.kind, "suspended in Git", env.spec.interval)
        self._adopt_ledger(env, target)
        inventory = self.ledger.inventory(name)
        live = target.observe(env, inventory | {d.ref for d in env.objects})
        self._record_runs(env, live)
        if target.vanished_runs_are_final:
            self._record_vanished(env, live)
        items = planner.plan(env, live, inventory, self.ledger.finished_runs(name), self.options,
                             target.expected(env, live))
        last_applied = self.ledger.last_applied(name)
        self._report_drift(name, items, inventory, last_applied == revision.sha)
        context = ApplyContext(name, revision.sha, lambda path: self.source.materialize(
            revision, path, self.ledger.path.parent / "checkouts"))
        creating = {i.ref for i in items if i.action in (Action.CREATE, Action.RECREATE, Action.SUBMIT)}
        if creating - inventory:  # owned before it exists: a crash or a stop mid-apply never loses track of it
            self.ledger.set_inventory(name, inventory | creating)
        outcomes, errors = self._apply(env, items, target, context)
        if outcomes:
            live = target.observe(env, inventory | {d.ref for d in env.objects})
            self._record_runs(env, live)
        self.ledger.set_inventory(name, self._inventory(env, items, outcomes, live))
        self._persist_ledger(env, target)
        pending = [i for i in items if i.action == Action.SKIP and i.desired is None and "refused" in i.reason]
        stale = self.source.failure
        sync = "Failed" if errors else "Stale" if stale else "OutOfSync" if pending else "Synced"
        env_health, detail = self._report_health(env, live)
        summary = "; ".join(f"{i.ref} {o.value}" for i, o in outcomes) or "no changes"
        message = ("; ".join(errors) or (f"Stale: {stale}" if stale else "") or "; ".join(i.reason for i in pending)
                   or summary)
        if not errors and (outcomes or last_applied != revision.sha):
            self.ledger.record_revision(name, revision.sha, revision.commit_time, "success", summary[:2000])
            if last_applied != revision.sha:
                self.metrics.commit_to_applied.labels(name).observe(max(0.0, time.time() - revision.commit_time))
        elif errors:
            self.ledger.record_revision(name, revision.sha, revision.commit_time, "error", message[:2000])
        self.ledger.set_state(EnvironmentState(name, target.kind, revision.sha, sync, env_health, message[:2000],
                                               time.time(), detail))
        self.metrics.environment_status(name, target.kind, revision.short, sync, env_health)
        result = "error" if errors else "success" if outcomes else "noop"
        return Result(name, result, sync, env_health, message, outcomes, interval=env.spec.interval)

    def _suspended(self, name: str, revision: Revision, target: str, reason: str, interval: float = 60.0) -> Result:
        """Report `Suspended` and touch nothing (Git's `spec.suspend: true` or the ledger's flag)."""
        self.ledger.set_state(EnvironmentState(name, target, revision.sha, "Suspended", health.UNKNOWN, reason,
                                               time.time(), {}))
        self.metrics.environment_status(name, target, revision.short, "Suspended", health.UNKNOWN)
        return Result(name, "noop", "Suspended", health.UNKNOWN, reason, interval=interval)

    def _apply(self, env: RenderedEnvironment, items: list[PlanItem], target: Target,
               context: ApplyContext) -> tuple[list[tuple[PlanItem, Outcome]], list[str]]:
        outcomes, errors = [], []
        name = env.spec.name
        said, self._said[name] = self._said.get(name, set()), set()
        for item in items:
            for warning in item.warnings:
                self._say(name, said, logging.WARNING, f"{item.ref}: {warning}")
            if item.action not in CHANGES:
                if item.action == Action.SKIP:
                    level = logging.DEBUG if Flag.RUN_FINISHED in item.flags else logging.INFO
                    self._say(name, said, level, f"{item.ref} skipped: {item.reason}")
                continue
            if self.stopping.is_set():
                left = sum(1 for i in items[items.index(item):] if i.action in CHANGES)
                raise Interrupted(f"stopping: {left} change(s) left for the next start")
            if item.action in (Action.SUBMIT, Action.RECREATE) and item.ref.kind == "RayJob" and item.desired:
                manifest = item.desired.manifest
                self.ledger.record_submission(env.spec.name, job_submission_id(env.spec.name, item.ref.name, manifest),
                                              item.ref.name, spec_hash(manifest))
            try:
                outcome = target.apply(item, context)
            except Exception as exc:  # one object's failure must not stop the others
                log.error("environment %s: %s %s failed: %s", env.spec.name, item.ref, item.action.value, exc)
                errors.append(f"{item.ref} {item.action.value} failed: {exc}")
                outcomes.append((item, Outcome.FAILED))
                target.report_event(item, Outcome.FAILED, f"{item.action.value} failed: {exc}", context)
                continue
            log.info("environment %s: %s %s (%s)", env.spec.name, item.ref, outcome.value, item.reason)
            target.report_event(item, outcome, f"{outcome.value}: {item.reason}", context)
            self.metrics.apply_total.labels(env.spec.name, item.ref.kind, item.action.value).inc()
            outcomes.append((item, outcome))
        return outcomes, errors

    def _say(self, name: str, said: set[str], level: int, message: str) -> None:
        """Log a skip or a warning when it is new (a steady state repeats them every cycle: said once)."""
        self._said[name].add(message)
        if message not in said:
            log.log(level, "environment %s: %s", name, message)

    @staticmethod
    def _inventory(env: RenderedEnvironment, items: list[PlanItem], outcomes: list[tuple[PlanItem, Outcome]],
                   live: dict[ObjectRef, LiveObject]) -> set[ObjectRef]:
        """Objects we own after this reconcile: live desired ones, failed deletes, refused prunes."""
        failed = {i.ref for i, o in outcomes if o == Outcome.FAILED}
        keep = {d.ref for d in env.objects if d.ref in live or d.ref in failed}
        kept_prunes = {i.ref for i in items if i.desired is None and (i.action == Action.SKIP or i.ref in failed)}
        return keep | kept_prunes

    def _record_runs(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> None:
        """Move each live RayJob run forward in the ledger; count a run once, when it first ends."""
        for obj in live.values():
            run, status = obj.status.get("jobId"), obj.status.get("jobStatus")
            if obj.ref.kind != "RayJob" or not run or not status:
                continue
            start, end = obj.status.get("startTime"), obj.status.get("endTime")
            if self.ledger.update_run(env.spec.name, run, obj.ref.name, status, start, end):
                result = self.ledger.finished_runs(env.spec.name)[run]
                self.metrics.rayjob_runs.labels(env.spec.name, obj.ref.name, result).inc()
                if start and end:
                    self.metrics.rayjob_duration.labels(env.spec.name, obj.ref.name).observe(max(0.0, end - start))
                log.info("environment %s: RayJob %s run %s finished: %s", env.spec.name, obj.ref.name, run, result)

    def _adopt_ledger(self, env: RenderedEnvironment, target: Target) -> None:
        """Once per process: take the ledger the target keeps (a new leader, an empty state dir)."""
        name = env.spec.name
        if name not in self._persisted:
            snapshot = target.load_ledger(env.spec)
            if snapshot is not None:
                self.ledger.merge(name, snapshot)
            self._persisted[name] = self.ledger.snapshot(name)

    def _persist_ledger(self, env: RenderedEnvironment, target: Target) -> None:
        name = env.spec.name
        snapshot = self.ledger.snapshot(name)
        if snapshot != self._persisted.get(name):
            target.save_ledger(env.spec, snapshot)
            self._persisted[name] = snapshot

    def _record_vanished(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> None:
        """On Kubernetes a finished RayJob may be deleted by its TTL or DeleteSelf before we saw it end:
        a submitted run whose object is gone is final and is never re-created."""
        submitted = self.ledger.submitted_runs(env.spec.name)
        for desired in env.objects:
            run = job_submission_id(env.spec.name, desired.ref.name, desired.manifest)
            if desired.ref.kind == "RayJob" and desired.ref not in live and run in submitted:
                if self.ledger.mark_vanished(env.spec.name, run):
                    log.warning("environment %s: %s run %s disappeared before it was seen to finish (TTL or "
                                "deletion); it is not re-created", env.spec.name, desired.ref, run)

    def _report_drift(self, name: str, items: list[PlanItem], inventory: set[ObjectRef], steady: bool) -> None:
        counts: dict[tuple[str, ...], float] = {}
        if steady:
            for item in items:
                if item.action in (Action.UPDATE, Action.RECREATE) or (
                        item.action == Action.CREATE and item.ref in inventory):
                    counts[(item.ref.kind,)] = counts.get((item.ref.kind,), 0) + 1
        self.metrics.replace(self.metrics.drifted_objects, name, counts)

    def _report_health(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> tuple[str, dict]:
        name, finished = env.spec.name, self.ledger.finished_runs(env.spec.name)
        workers: dict[tuple[str, ...], float] = {}
        states: dict[tuple[str, ...], float] = {}
        jobs: dict[tuple[str, ...], float] = {}
        healths, detail = [], {"clusters": {}, "jobs": {}}
        for desired in env.objects:
            obj = live.get(desired.ref)
            ref = desired.ref
            if ref.kind == "RayJob" and obj is None:
                result = finished.get(job_submission_id(name, ref.name, desired.manifest))
                status = {"succeeded": "SUCCEEDED", "failed": "FAILED", "stopped": "STOPPED"}.get(result or "")
                obj_health = health.DEGRADED if result == "failed" else health.HEALTHY if result else health.MISSING
            else:
                obj_health, _ = health.of(obj)
                status = obj.status.get("jobStatus") if obj else None
            healths.append(obj_health)
            if ref.kind == "RayJob":
                jobs.update({(ref.name, s): float(s == status) for s in JOB_STATUSES})
                detail["jobs"][ref.name] = {"status": status or "", "health": obj_health}
            if ref.kind == "RayCluster":
                state = (obj.status.get("state") or "provisioning") if obj else "provisioning"
                states.update({(ref.name, s): float(s == state) for s in CLUSTER_STATES})
                groups = _group_counts(desired.manifest, obj)
                for group, counts in groups.items():
                    workers.update({(ref.name, group, k): float(v) for k, v in counts.items()})
                detail["clusters"][ref.name] = {"health": obj_health, "groups": groups}
        self.metrics.replace(self.metrics.raycluster_workers, name, workers)
        self.metrics.replace(self.metrics.raycluster_state, name, states)
        self.metrics.replace(self.metrics.rayjob_status, name, jobs)
        return health.worst(healths), detail


def _group_counts(manifest: dict, obj: LiveObject | None) -> dict[str, dict[str, int]]:
    """Per worker group: desired (clamped), min, max from Git (replicas from live when the autoscaler owns
    them); ready and available from the target."""
    live_groups = {g.get("groupName"): g for g in cluster_spec(obj.manifest).get("workerGroupSpecs") or []} if obj else {}
    autoscaled = cluster_spec(manifest).get("enableInTreeAutoscaling") is True
    out = {}
    for group in cluster_spec(manifest).get("workerGroupSpecs") or []:
        name = group.get("groupName")
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        replicas = (live_groups.get(name) or group).get("replicas", 0) if autoscaled else group.get("replicas", 0)
        ready = (obj.workers.get(name, 0) if obj else 0)
        out[name] = {"desired": min(max(replicas, low), high) * group.get("numOfHosts", 1), "min": low, "max": high,
                     "ready": ready, "available": ready}
    return out


class TargetFactory:
    """Builds each target once per (kind, connection options) and closes them all on shutdown.
    Thread-safe: environment threads ask for their target at the same time."""

    def __init__(self, build: Callable[[EnvironmentSpec], Target]) -> None:
        self._build = build
        self._targets: dict[str, Target] = {}
        self._lock = threading.Lock()

    def get(self, env: RenderedEnvironment) -> Target:
        options = {k: v for k, v in env.spec.target.options.items() if k not in ("namespace", "persist")}
        key = json.dumps([env.spec.target.kind, options], sort_keys=True)
        with self._lock:
            if key not in self._targets:
                self._targets[key] = self._build(env.spec)
            return self._targets[key]

    def close(self) -> None:
        with self._lock:
            targets = list(self._targets.values())
        for target in targets:
            target.close()
