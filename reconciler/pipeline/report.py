"""How a reconcile is told: each environment's status in the ledger, its metric series (`environment_info`, drift,
workers per group, cluster states, job and Serve statuses, promotion gates, finished runs), the health detail that
`status -o json` and the status page show, and the plan's warnings and skips logged once. `reconcile.Pipeline`
decides; this module reports what it decided and found.

Thread ownership: called from several environment threads at once, never twice at the same time for one
environment; the per-environment entries of `_said` are touched only by the thread reconciling that environment.
The ledger and metrics are thread-safe.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from ..kuberay import cluster_spec, worker_groups
from ..metrics import Metrics
from ..model import (
    JOB_STATUSES,
    Action,
    Flag,
    Health,
    LiveObject,
    ObjectRef,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    RunResult,
    SyncStatus,
    desired_workers,
    job_submission_id,
)
from . import health
from .ledger import EnvironmentState, JobRun, Ledger, Record
from .source import Revision

log = logging.getLogger("reconciler.pipeline.reconcile")  # the pipeline's one logger: users filter on it
CLUSTER_STATES = ("ready", "provisioning", "suspended", "failed")
SERVE_STATUSES = tuple(health.SERVE_APPLICATION_HEALTH)  # Ray Serve's application statuses
HEAD_GROUP = "headgroup"  # KubeRay's `ray.io/group` of the head node
_GROUP_PATH = re.compile(r"spec\.(?:rayClusterConfig\.)?(?:headGroupSpec|workerGroupSpecs\[([^]]+)\])(?:\.([^.\[]+))?")
NODE_DEFINITION = ("template", "rayStartParams", "numOfHosts")  # what a group's existing nodes were started from


class Reporter:
    """Writes what reconciles found: statuses to `ledger`, series to `metrics`, times from `clock`."""

    def __init__(self, ledger: Ledger, metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.metrics, self.clock = ledger, metrics, clock
        self._said: dict[str, set[str]] = {}  # per environment: skip reasons and warnings already logged

    # -- states of an environment that is not applied ------------------------------------------------
    def state(self, state: EnvironmentState) -> None:
        """Record `state` as the environment's status (no history row) and its `environment_info` series."""
        self.ledger.commit(state.environment, state=state)
        self.metrics.environment_status(state.environment, state.target, state.revision[:12], state.sync_status,
                                        state.health_status)

    def held(self, name: str, sync: SyncStatus, message: str, keep_health: bool = True) -> Health:
        """`name` stays on the revision it applied last, reporting `sync` and `message` with its last target kind,
        detail and (`keep_health`) health, else Unknown: a failed reconcile, a stuck one, a refused removal. Its
        health."""
        previous = self.ledger.state(name)
        kind = previous.target if previous else "unknown"
        env_health = previous.health_status if previous and keep_health else Health.UNKNOWN
        applied = self.ledger.load(name).last_applied or ""
        self.state(EnvironmentState(name, kind, applied, sync, env_health, message, self.clock(),
                                    previous.detail if previous else {}))
        return env_health

    def waiting(self, name: str, target: str, reason: str, detail: dict[str, Any]) -> None:
        """`Waiting`, nothing applied yet (a first revision held by a promotion gate; `detail`: what for)."""
        self.state(EnvironmentState(name, target, "", SyncStatus.WAITING, Health.UNKNOWN, reason, self.clock(), detail))

    def suspended(self, name: str, revision: Revision, target: str, reason: str) -> None:
        """`Suspended` at the revision applied last (the head is not)."""
        applied = self.ledger.load(name).last_applied or ""
        self.state(EnvironmentState(name, target, applied, SyncStatus.SUSPENDED, Health.UNKNOWN,
                                    f"{reason} (head {revision.short})", self.clock(), {}))

    def advanced(self, states: list[EnvironmentState], revision: Revision) -> None:
        """`environment_info` of environments moved to `revision` without a reconcile."""
        for state in states:
            self.metrics.environment_status(state.environment, state.target, revision.short, state.sync_status,
                                            state.health_status)

    # -- parts of a reconcile's report ----------------------------------------------------------------
    def gate(self, name: str, waiting: dict[tuple[str, ...], float]) -> None:
        """`promotion_waiting`: 1 for each dependency the environment waits for, 0 for the others."""
        self.metrics.replace(self.metrics.promotion_waiting, name, waiting)

    def tell(self, name: str, items: list[PlanItem]) -> None:
        """Log each warning and skip of the plan when it is new: a steady state repeats them every cycle, so each is
        said once (again if it goes away and comes back), whether or not the reconcile changes anything."""
        said, self._said[name] = self._said.get(name, set()), set()
        for item in items:
            messages = [(logging.WARNING, f"{item.ref}: {warning}") for warning in item.warnings]
            if item.action == Action.SKIP:
                level = logging.DEBUG if Flag.RUN_FINISHED in item.flags else logging.INFO
                messages.append((level, f"{item.ref} skipped: {item.reason}"))
            for level, message in messages:
                self._said[name].add(message)
                if message not in said:
                    log.log(level, "environment %s: %s", name, message)

    def drift(self, name: str, items: list[PlanItem], inventory: frozenset[ObjectRef], steady: bool) -> set[ObjectRef]:
        """Count (`drifted_objects`) and return the objects whose live state moved away from the revision already
        applied (hand edits, another applier, a dead worker, a deleted object); the plan sets them back."""
        counts: dict[tuple[str, ...], float] = {}
        drifted = set()
        if steady:
            for item in items:
                if item.action in (Action.UPDATE, Action.RECREATE) or (
                        item.action == Action.CREATE and item.ref in inventory):
                    counts[(item.ref.kind,)] = counts.get((item.ref.kind,), 0) + 1
                    drifted.add(item.ref)
        self.metrics.replace(self.metrics.drifted_objects, name, counts)
        return drifted

    def ended(self, name: str, runs: list[JobRun]) -> None:
        """Count the runs first seen to end, once the ledger commit that says they ended is done (a failed
        commit sees them end again; a commit without its count would never count them)."""
        for run in runs:
            if run.result == RunResult.DELETED:
                log.warning("environment %s: RayJob %s run %s disappeared before it was seen to finish (TTL or "
                            "deletion); it is not re-created", name, run.job, run.submission_id)
                continue
            self.metrics.rayjob_runs.labels(name, run.job, run.result).inc()
            if run.start_time and run.end_time:
                self.metrics.rayjob_duration.labels(name, run.job).observe(max(0.0, run.end_time - run.start_time))
            log.info("environment %s: RayJob %s run %s finished: %s", name, run.job, run.submission_id, run.result)

    def health(self, rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject], record: Record,
               outcomes: list[tuple[PlanItem, Outcome]],
               draining: dict[ObjectRef, dict[str, float]] | None = None) -> tuple[Health, dict[str, Any]]:
        """The environment's health (its objects' worst) and detail (per object, cluster, job and Serve
        application), and their series: workers per group, cluster states, job and Serve statuses."""
        name = rendered.spec.name
        previous = self.ledger.state(name)
        report = _Health(name, record, previous.detail if previous else {}, draining or {}, self.clock())
        for desired in rendered.objects:
            report.add(desired.ref, desired.manifest, desired.warnings, live.get(desired.ref),
                       [(i, o) for i, o in outcomes if i.ref == desired.ref])
        self.metrics.replace(self.metrics.raycluster_workers, name, report.workers)
        self.metrics.replace(self.metrics.raycluster_state, name, report.states)
        self.metrics.replace(self.metrics.rayjob_status, name, report.jobs)
        self.metrics.replace(self.metrics.rayservice_application_status, name, report.applications)
        return Health.worst(report.healths), report.detail


class _Health:
    """One environment's health report, object by object (`Reporter.health`); `before`: the previous report's
    detail (what it carries on: pending restarts)."""

    def __init__(self, name: str, record: Record, before: dict[str, Any],
                 draining: dict[ObjectRef, dict[str, float]], now: float) -> None:
        self.name, self.record, self.before, self.draining, self.now = name, record, before, draining, now
        self.workers: dict[tuple[str, ...], float] = {}
        self.states: dict[tuple[str, ...], float] = {}
        self.jobs: dict[tuple[str, ...], float] = {}
        self.applications: dict[tuple[str, ...], float] = {}
        self.healths: list[Health] = []
        self.detail: dict[str, Any] = {"clusters": {}, "jobs": {}, "services": {}, "objects": {}}

    def add(self, ref: ObjectRef, manifest: dict[str, Any], warnings: tuple[str, ...], obj: LiveObject | None,
            applied: list[tuple[PlanItem, Outcome]]) -> None:
        """One rendered object (`obj`: its live state; `applied`: what this reconcile did to it)."""
        if ref.kind == "RayJob" and obj is None:
            result = self.record.finished.get(job_submission_id(self.name, ref.name, manifest))
            status = {RunResult.SUCCEEDED: "SUCCEEDED", RunResult.FAILED: "FAILED",
                      RunResult.STOPPED: "STOPPED"}.get(result) if result else None
            obj_health = (Health.DEGRADED if result == RunResult.FAILED else Health.HEALTHY if result
                          else Health.MISSING)
            why = f"run {result}; the RayJob is gone (TTL or deletion)" if result else "not found"
        else:
            obj_health, why = health.of(obj)
            # a live RayJob is a submitted run; KubeRay leaves jobStatus empty until Ray reports on it
            status = (obj.status.get("jobStatus") or "PENDING") if obj and ref.kind == "RayJob" else None
        self.healths.append(obj_health)
        self.detail["objects"][str(ref)] = {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name,
                                            "health": obj_health.value, "message": why,
                                            **({"warnings": list(warnings)} if warnings else {})}
        if ref.kind == "RayCronJob":  # its newest run's status
            runs = sorted((r for r in self.record.runs.values() if r.job == ref.name), key=lambda r: r.submitted_at)
            status = runs[-1].status if runs else None
        if ref.kind in ("RayJob", "RayCronJob"):
            self.jobs.update({(ref.name, s): float(s == status) for s in JOB_STATUSES})
            self.detail["jobs"][ref.name] = {"status": status or "", "health": obj_health.value}
        if ref.kind == "RayService":
            service = _service(obj)
            self.detail["services"][ref.name] = {"health": obj_health.value, **service}
            if restart := self._service_restart(ref, manifest, obj, applied, service["activeCluster"]):
                self.detail["services"][ref.name]["pendingRestart"] = restart
            self.applications.update({(ref.name, app, s): float(s == app_status) for app, app_status in
                                      service["applications"].items() for s in SERVE_STATUSES})
        if ref.kind == "RayCluster":
            self._cluster(ref, manifest, obj, obj_health, applied)

    def _service_restart(self, ref: ObjectRef, manifest: dict[str, Any], obj: LiveObject | None,
                         applied: list[tuple[PlanItem, Outcome]], active: str) -> dict[str, float]:
        """A RayService's pending restart. Under `upgradeStrategy: None` a cluster spec change starts no new
        cluster and KubeRay leaves the active one's spec as it was, so node ages say nothing: the mark lasts until
        another cluster is active (e.g. the strategy went back to NewCluster) or ray-gitops recreates the object."""
        if obj is None:
            return {}
        earlier = (self.before.get("services") or {}).get(ref.name) or {}
        replaced = bool(active and earlier.get("activeCluster") and earlier["activeCluster"] != active)
        return _pending_restart(manifest, applied, None if replaced else earlier.get("pendingRestart"), self.now)

    def _cluster(self, ref: ObjectRef, manifest: dict[str, Any], obj: LiveObject | None, obj_health: Health,
                 applied: list[tuple[PlanItem, Outcome]]) -> None:
        """A RayCluster's state, worker counts per group, pending restart and draining groups."""
        state = (obj.status.get("state") or "provisioning") if obj else "provisioning"
        self.states.update({(ref.name, s): float(s == state) for s in CLUSTER_STATES})
        groups = _group_counts(manifest, obj)
        for group, counts in groups.items():
            self.workers.update({(ref.name, group, k): float(v) for k, v in counts.items()})
        cluster: dict[str, Any] = {"health": obj_health.value, "groups": groups}
        self.detail["clusters"][ref.name] = cluster
        before = ((self.before.get("clusters") or {}).get(ref.name) or {}).get("pendingRestart")
        restart = _pending_restart(manifest, applied, before, self.now) if obj else {}
        if obj and obj.oldest_nodes is not None:  # a group is restarted once all its nodes are newer than the change
            restart = {g: t for g, t in restart.items() if g in obj.oldest_nodes and obj.oldest_nodes[g] < t - 1}
        if restart:
            cluster["pendingRestart"] = restart
        if self.draining.get(ref) and obj_health != Health.DEGRADED:  # a removed group scales to 0 first
            groups_left = ", ".join(sorted(self.draining[ref]))
            why = f"draining worker group(s) {groups_left}: removed from the spec once their nodes are gone"
            self.healths[-1] = Health.PROGRESSING
            self.detail["objects"][str(ref)].update(health=Health.PROGRESSING.value, message=why)
            cluster.update(health=Health.PROGRESSING.value, draining=self.draining[ref])


def _restarted_groups(manifest: dict[str, Any], changes: tuple[str, ...]) -> set[str]:
    """The groups (`headgroup`, worker group names) whose nodes a pending-restart change leaves outdated: those
    whose template or rayStartParams changed, or every group for a change outside the groups."""
    named = set()
    for path in changes:
        match = _GROUP_PATH.match(path)
        if match and match.group(1) is None:
            named.add(HEAD_GROUP)
        elif match and match.group(2) in NODE_DEFINITION:
            named.add(match.group(1))
    return named or {HEAD_GROUP, *worker_groups(manifest)}


def _pending_restart(manifest: dict[str, Any], applied: list[tuple[PlanItem, Outcome]], before: dict[str, Any] | None,
                     now: float) -> dict[str, float]:
    """group -> when a pod-template change was applied to it without a restart (a RayCluster's, or a RayService's
    cluster spec under `upgradeStrategy: None`): carried from the previous report (`before`), set by this one's
    CONFIGURED changes flagged PENDING_RESTART, cleared when ray-gitops (re)creates the object. The callers clear
    it further from what the target shows (node ages; a RayService's new cluster): creation times have one-second
    resolution, so a node is older only if it started more than a second before the change."""
    pending = {str(g): float(t) for g, t in (before or {}).items()}
    for item, outcome in applied:
        if outcome in (Outcome.CREATED, Outcome.RECREATED):
            pending = {}
        elif outcome == Outcome.CONFIGURED and Flag.PENDING_RESTART in item.flags:
            pending.update(dict.fromkeys(_restarted_groups(manifest, item.changes), now))
    return pending


def _service(obj: LiveObject | None) -> dict[str, Any]:
    """A RayService's detail: its active and pending clusters, its applications' Serve statuses on the active one,
    and its address when the target gives one (the local target's `serveURL`)."""
    status = obj.status if obj else {}
    active, pending = status.get("activeServiceStatus") or {}, status.get("pendingServiceStatus") or {}
    return {"activeCluster": active.get("rayClusterName", ""), "pendingCluster": pending.get("rayClusterName", ""),
            "applications": {app: str(entry.get("status", "")) for app, entry in
                             sorted((active.get("applicationStatuses") or {}).items())},
            **({"url": status["serveURL"]} if status.get("serveURL") else {})}


def _group_counts(manifest: dict[str, Any], obj: LiveObject | None) -> dict[str, dict[str, int]]:
    """Per worker group: desired (clamped), min, max from Git (replicas from live when the autoscaler owns
    them), min and max as the target holds them once it has the group (the local target clamps maxReplicas to
    its cap); ready and available from the target."""
    live_groups = worker_groups(obj.manifest) if obj else {}
    autoscaled = cluster_spec(manifest).get("enableInTreeAutoscaling") is True
    out = {}
    for name, group in worker_groups(manifest).items():
        held = live_groups.get(name) or group
        counted = {**group, "replicas": held.get("replicas", 0)} if autoscaled else group
        ready = obj.workers.get(name, 0) if obj else 0
        out[name] = {"desired": desired_workers(counted), "min": held.get("minReplicas", 0),
                     "max": held.get("maxReplicas", 2**31 - 1), "ready": ready, "available": ready}
    return out
