"""The one pipeline of an environment: render -> load its record -> (the target's own control step)
-> observe -> plan -> apply -> observe -> report. `Pipeline.preview` (what `plan` and `diff` print) is
the same pipeline without the control step, stopped before apply: it writes nothing. `Pipeline.reconcile`
goes on; `Pipeline.remove` prunes an environment that left Git.

A reconcile reads the environment's ledger record once and writes it back once (twice when it
creates objects or submits runs: they are owned in the ledger before they exist, so a crash or a
stop mid-apply never loses track of them). Errors of one object do not stop the others; an invalid
environment applies and prunes nothing and keeps its last applied state.

Thread ownership: called from several environment threads at once, never twice at the same time
for one environment (the daemon's schedule guarantees it). It reads only the revision's immutable
snapshot; the per-environment entries of `_adopted` and `_said` are touched only by the thread
reconciling that environment (and by `forget`, from the daemon's loop while none runs); `_foreign`
(what each environment found owned by another) is shared and read under `_lock`; the ledger, metrics
and targets are thread-safe.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidEnvironment, PermanentError, RayGitopsError, TemporaryError, Unreachable
from ..metrics import Metrics
from ..model import (
    REVISION_ANNOTATION,
    Action,
    Flag,
    Health,
    HistoryResult,
    LedgerSnapshot,
    LiveObject,
    ObjectRef,
    Outcome,
    PlanItem,
    ReconcileResult,
    RenderedEnvironment,
    SyncStatus,
    parse_time,
)
from . import planner
from .diff import changed_by
from .ledger import Applied, Change, EnvironmentState, JobRun, Ledger, Record
from .render import render
from .report import Reporter
from .source import FileTree, GitSource, Inputs, Reads, Revision, SourceState
from .target import ApplyContext, Controls, KeepsLedger, ReportsEvents, RunReport, Target, Targets, Watches

log = logging.getLogger(__name__)
CHANGES = {Action.CREATE, Action.UPDATE, Action.RECREATE, Action.DELETE, Action.SUBMIT}
CREATES = {Action.CREATE, Action.RECREATE, Action.SUBMIT}
# never quiet: a RayCronJob's slots come from the clock; a RayService upgrades through RayClusters KubeRay makes,
# which the watch (our objects only) does not see
UNQUIET = ("RayCronJob", "RayService")
FIRST_WRITES = {Action.CREATE, Action.SUBMIT}  # no Event: a new object is its own record (1 ms of server CPU each)
# seconds: a waiting environment looks again this soon (a dependency moving also wakes it), and so does a
# Progressing one that is not quiet (Pods becoming ready, a run starting), so that health and metrics follow
WAIT_RECHECK = 10.0


ADVANCED = "no changes: nothing it reads changed at this revision"  # the history summary of `advance`


@dataclass
class Result:
    """What one reconcile did and found."""

    environment: str
    result: ReconcileResult
    sync_status: SyncStatus
    health_status: Health
    message: str = ""
    outcomes: list[tuple[PlanItem, Outcome]] = field(default_factory=list)
    retry_after: float | None = None
    interval: float = 60.0
    revision: str = ""  # the revision the environment is on after this reconcile
    depends_on: tuple[str, ...] = ()
    claimed: tuple[str, ...] = ()  # environments whose objects it newly found (or no longer finds) beside its own
    inputs: Inputs = frozenset()  # what it read of the revision (`source.Reads`)
    quiet: bool = False  # Synced and watched (`_quiet`): nothing to do until the watch or Git says something moved


@dataclass(frozen=True)
class Preview:
    """The plan of one environment at one revision (what `plan` and `diff` print)."""

    environment: str
    revision: Revision
    items: list[PlanItem]

    @property
    def changes(self) -> list[PlanItem]:
        return [i for i in self.items if i.action not in (Action.NOOP, Action.SKIP)]


class Interrupted(TemporaryError):
    """The daemon is stopping: the rest of this reconcile is left for the next start (`outcomes`: what was
    applied before)."""

    def __init__(self, message: str, outcomes: list[tuple[PlanItem, Outcome]]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


@dataclass
class _Pass:
    """One reconcile's pass over an environment, as `Pipeline._converge` makes it: the record as loaded and as last
    committed (`persisted`), the record now, what was observed and planned, what was applied."""

    persisted: Record
    record: Record
    live: dict[ObjectRef, LiveObject]
    items: list[PlanItem]
    draining: dict[ObjectRef, dict[str, float]]
    shared: list[str]  # reports of this environment's objects that another one also names
    claimed: tuple[str, ...]
    ended: list[JobRun]  # runs first seen to end, not yet counted
    outcomes: list[tuple[PlanItem, Outcome]] = field(default_factory=list)
    errors: dict[ObjectRef, str] = field(default_factory=dict)


class Pipeline:
    """Reconciles (or previews) environments of one Git source onto their targets."""

    def __init__(self, source: GitSource, ledger: Ledger, metrics: Metrics, targets: Targets,
                 options: planner.PlanOptions = planner.PlanOptions(),
                 stopping: threading.Event | None = None, scope: frozenset[str] | None = None,
                 checkouts: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.source, self.ledger, self.metrics, self.targets, self.options = source, ledger, metrics, targets, options
        self.stopping = stopping or threading.Event()  # set: apply nothing more, leave the rest for later
        self.scope = scope  # the environments reconciled here (`--environment`); None: all
        self.checkouts = checkouts  # where a revision's directories are exported for jobs (None: a preview's)
        self.clock = clock
        self.report = Reporter(ledger, metrics, clock)
        self._adopted: dict[str, LedgerSnapshot] = {}  # per environment: the copy its target holds
        self._warned: dict[str, str] = {}  # per environment: the unverified head it was told about
        self._foreign: dict[str, dict[ObjectRef, str]] = {}  # per environment: objects it found another's (-> owner)
        self._lock = threading.Lock()  # around `_foreign`, which every environment thread reads

    # -- preview: the pipeline up to the plan ---------------------------------------------------------
    def preview(self, name: str, revision: Revision) -> Preview:
        """The plan at `revision`, applying and recording nothing. The target's copy of the ledger (on
        Kubernetes: newer than a fresh state dir) is always read."""
        rendered = render(revision.tree, name, revision.sha, self.targets)
        target = self.targets.get(rendered.spec)
        record = self.ledger.load(name)
        if isinstance(target, KeepsLedger):
            copy = target.load_ledger(rendered.spec)
            record = record.merged(copy, _spec_hashes(rendered)) if copy is not None else record
        live, record, _ = self._observe(rendered, target, record)
        return Preview(name, revision, self._plan(rendered, target, live, record)[0])

    # -- reconcile ------------------------------------------------------------------------------------
    def reconcile(self, name: str, revision: Revision) -> Result:
        started, reads = time.monotonic(), Reads(revision.tree)
        result = replace(self._guarded(name, revision, lambda: self._reconcile(name, revision, reads)),
                         inputs=reads.inputs())
        self.metrics.reconcile_total.labels(name, result.result).inc()
        self.metrics.reconcile_duration.labels(name).observe(time.monotonic() - started)
        return result

    def remove(self, name: str, revision: Revision) -> Result:
        """`name` left Git at `revision`: prune what it applied, as its own prune would with the settings of the
        revision it applied last (`prune: false` keeps the objects and says so), drop the target's copy of its
        ledger, forget its metric series and report it `Removed`. Suspended (by `ray-gitops suspend`, or in Git at
        its last revision): nothing is removed. The daemon's removal guard decides before (`removal_refused`)."""
        result = self._guarded(name, revision, lambda: self._remove(name, revision))
        if result.sync_status == SyncStatus.REMOVED:
            self.metrics.forget(name)
        return result

    def _guarded(self, name: str, revision: Revision, work: Callable[[], Result]) -> Result:
        """`work`'s result; an error fails this environment alone (reported, its last applied state kept)."""
        try:
            return work()
        except Interrupted as exc:
            log.info("environment %s: %s", name, exc)
            return Result(name, ReconcileResult.ERROR, SyncStatus.FAILED, Health.UNKNOWN, str(exc))
        except InvalidEnvironment as exc:
            log.error("%s", exc)
            result = self._failed(name, revision, "invalid environment: " + "; ".join(str(e) for e in exc.errors))
        except RayGitopsError as exc:
            log.error("environment %s: %s", name, exc)
            result = self._failed(name, revision, str(exc), getattr(exc, "retry_after", None))
        except Exception as exc:  # a target or a bug: this environment fails, the others go on
            log.exception("environment %s: reconcile failed", name)
            result = self._failed(name, revision, f"{type(exc).__name__}: {exc}")
        return result

    def _remove(self, name: str, revision: Revision) -> Result:
        loaded, previous = self.ledger.load(name), self.ledger.state(name)
        kind = previous.target if previous else "unknown"
        if loaded.suspended is not None:
            return self._suspended(name, revision, kind, f"removed from Git at {revision.short}, but suspended by "
                                   "`ray-gitops suspend`: nothing is pruned until `ray-gitops resume`")
        last = loaded.last_applied or (previous.revision if previous else "")
        if not last:  # nothing was ever applied: nothing to prune
            return self._removed(name, revision, kind, loaded, loaded, [], "nothing had been applied")
        if previous is not None and previous.sync_status == SyncStatus.SUSPENDED:
            return self._suspended(name, revision, kind, f"removed from Git at {revision.short}, but it was suspended "
                                   "in Git: nothing is pruned (add it back without suspend: true, then remove it)")
        before = render(self.source.revision(last).tree, name, last, self.targets)
        target = self.targets.get(before.spec)
        gone = RenderedEnvironment(before.spec, (), revision.sha)
        record = self._adopt(gone, target, loaded)
        live, record, ended = self._observe(gone, target, record)
        items = planner.plan(gone, live, record.inventory, record.finished,
                             replace(self.options, allow_empty_prune=True, allow_large_prune=True), {})
        context = ApplyContext(name, revision.sha, lambda path: Path(path), before.spec.target.options)
        self.report.tell(name, items)
        outcomes, errors = self._apply(gone, items, target, context) if items else ([], {})
        record = record.with_inventory(self._inventory(gone, items, outcomes, live))
        if errors:
            self.ledger.commit(name, loaded, record)
            self.report.ended(name, ended)
            raise TemporaryError(f"removed from Git at {revision.short}, but pruning failed: "
                                 f"{'; '.join(errors.values())}")
        if isinstance(target, KeepsLedger) and not record.inventory:
            target.drop_ledger(before.spec)
        kept = [i for i in items if i.action == Action.SKIP]
        why = ", ".join(sorted({i.reason for i in kept}))
        note = (f"{len(outcomes)} object(s) pruned" if outcomes else "no object to prune") + (
            f"; {len(kept)} kept: {why}" if kept else "")
        return self._removed(name, revision, target.kind, loaded, record, outcomes, note, tuple(ended))

    def advance(self, names: list[str], revision: Revision) -> list[EnvironmentState]:
        """Nothing `names` read changed at `revision` (`source.unchanged`): they are on it as they are, with no
        render and no request (status, history and `environment_info` say so). Their states now."""
        applied = Applied(revision.sha, revision.commit_time, HistoryResult.SUCCESS, ADVANCED, revision.signer)
        states = self.ledger.advance(names, applied)
        self.report.advanced(states, revision)
        log.info("revision %s: %d environment(s) read nothing it changed: on it without a reconcile", revision.short,
                 len(names))
        return states

    def report_stuck(self, name: str, since: float) -> None:
        """`name`'s reconcile has been running since `since` (Unix time) and does not end: say so in its status
        (its last applied revision stays as reported)."""
        self.report.held(name, SyncStatus.FAILED, "stuck: a reconcile has been running since "
                         f"{time.strftime('%H:%M:%S', time.localtime(since))} (a target that does not answer?); the "
                         "other environments go on", keep_health=False)

    def hold_removal(self, name: str, revision: Revision, reason: str) -> None:
        """`name` left Git at `revision` but the removal guard refused it (`reason`): nothing is touched, and the
        environment reports OutOfSync at the revision it applied last until a revision resolves it."""
        self.report.held(name, SyncStatus.OUT_OF_SYNC, f"removal refused: left Git at {revision.short}, but {reason}; "
                         "nothing is pruned until a revision restores it or removes fewer environments at once "
                         "(daemon setting removal_max_fraction)")

    def _removed(self, name: str, revision: Revision, kind: str, loaded: Record, record: Record,
                 outcomes: list[tuple[PlanItem, Outcome]], note: str, ended: tuple[JobRun, ...] = ()) -> Result:
        """Report `name` removed at `revision` (status, a history row, the log)."""
        message = f"removed from Git at {revision.short}: {note}"
        summary = "; ".join(f"{i.ref} {o.value}" for i, o in outcomes) or note
        state = EnvironmentState(name, kind, revision.sha, SyncStatus.REMOVED, Health.UNKNOWN, message, self.clock(),
                                 {})
        applied = Applied(revision.sha, revision.commit_time, HistoryResult.REMOVED, summary,
                          changes=_changes(outcomes, {}))
        self.ledger.commit(name, loaded, record, state, applied)
        self.report.ended(name, list(ended))
        self._adopted.pop(name, None)  # back in Git later: its target's copy is read again
        log.info("environment %s: %s", name, message)
        return Result(name, ReconcileResult.SUCCESS, SyncStatus.REMOVED, Health.UNKNOWN, message, outcomes,
                      revision=revision.sha)

    def _reconcile(self, name: str, revision: Revision, tree: FileTree) -> Result:
        """Reconcile `name` at `revision`, reading its files from `tree` (the revision's, as it notes reads)."""
        loaded = self.ledger.load(name)  # read every time: `ray-gitops suspend/resume` need no restart
        if loaded.suspended is not None:
            previous = self.ledger.state(name)
            reason = "suspended by `ray-gitops suspend`" + (f": {loaded.suspended}" if loaded.suspended else "")
            return self._suspended(name, revision, previous.target if previous else "unknown", reason)
        rendered = render(tree, name, revision.sha, self.targets)
        target = self.targets.get(rendered.spec)
        if rendered.spec.suspend:
            return self._suspended(name, revision, target.kind, "suspended in Git", rendered.spec.interval)
        outside = [d for d in rendered.spec.depends_on if self.scope is not None and d not in self.scope]
        if outside:
            raise PermanentError(f"depends on {', '.join(outside)}, which this daemon does not reconcile (not selected "
                                 "with --environment): select it too, or remove the dependency")
        held_by = self._gate(rendered, revision, loaded)
        waiting = f"Waiting: {' and '.join(held_by)} not yet Healthy at {revision.short}" if held_by else ""
        gate = {"waitingFor": {"environments": list(held_by), "revision": revision.sha}} if held_by else {}
        if waiting and loaded.last_applied is None:  # nothing applied yet: nothing to keep in sync meanwhile
            self.report.waiting(name, target.kind, waiting, gate)
            return Result(name, ReconcileResult.NOOP, SyncStatus.WAITING, Health.UNKNOWN, waiting,
                          interval=WAIT_RECHECK, depends_on=rendered.spec.depends_on)
        if waiting and loaded.last_applied:  # stay on the last applied revision (drift is still corrected)
            revision = replace(self.source.revision(loaded.last_applied), state=revision.state)
            rendered = render(revision.tree, name, revision.sha, self.targets)
        done = self._converge(rendered, target, loaded, revision)
        return self._finish(rendered, target, revision, done, waiting, gate)

    def _converge(self, rendered: RenderedEnvironment, target: Target, loaded: Record, revision: Revision) -> _Pass:
        """Observe, plan and apply (the target's own control step first): what this pass did and found."""
        name = rendered.spec.name
        record = self._adopt(rendered, target, loaded)
        controlled = target.control(rendered.spec) if isinstance(target, Controls) else ()
        live, record, ended = self._observe(rendered, target, record, controlled)
        items, draining = self._plan(rendered, target, live, record)
        self.report.tell(name, items)
        drifted = self.report.drift(name, items, record.inventory, record.last_applied == revision.sha)
        shared, claimed = self._shared(name, items, live)
        done = _Pass(loaded, record, live, items, draining, shared, claimed, ended)
        if any(item.action in CHANGES for item in items):
            self._change(rendered, target, revision, done, drifted)
        done.record = done.record.with_inventory(self._inventory(rendered, items, done.outcomes, done.live))
        return done

    def _change(self, rendered: RenderedEnvironment, target: Target, revision: Revision, done: _Pass,
                drifted: set[ObjectRef]) -> None:
        """Own what is about to be created or submitted (a ledger commit), then apply the plan's changes and
        observe again what they changed."""
        name = rendered.spec.name
        done.record = self._claim(name, done.items, done.record)
        self.ledger.commit(name, done.persisted, done.record)
        done.persisted = done.record
        self.report.ended(name, done.ended)  # committed with the claim: counted now, before any apply
        done.ended = []
        context = ApplyContext(name, revision.sha, lambda path: self._export(revision, path),
                               rendered.spec.target.options, rendered.spec.ignore)
        try:
            done.outcomes, done.errors = self._apply(rendered, done.items, target, context,
                                                     {r: done.live.get(r) for r in drifted})
        except Interrupted as stop:
            self.ledger.commit(name, done.persisted, _unclaimed(name, done.items, stop.outcomes, done.record))
            raise
        done.record = _unclaimed(name, done.items, done.outcomes, done.record)
        if done.outcomes:
            done.live, done.record, more = self._observe(rendered, target, done.record)
            done.ended += more

    def _export(self, revision: Revision, path: str) -> Path:
        """The directory `path` of `revision` on disk (a job's `working_dir`)."""
        if self.checkouts is None:
            raise PermanentError(f"{path}: this pipeline has no checkout directory to export it to")
        return self.source.materialize(revision, path, self.checkouts)

    def _finish(self, rendered: RenderedEnvironment, target: Target, revision: Revision, done: _Pass, waiting: str,
                gate: dict[str, Any]) -> Result:
        """Report the pass (status, history row, health detail and series, the target's ledger copy) and say
        when to look again."""
        name = rendered.spec.name
        sync, message, summary = self._sync(done, waiting, revision.state)
        env_health, detail = self.report.health(rendered, done.live, done.record, done.outcomes, done.draining)
        if revision.signer:
            detail["signer"] = revision.signer
        detail.update(gate)
        applied = self._applied(name, revision, done, summary, message)
        state = EnvironmentState(name, target.kind, revision.sha, sync, env_health, message, self.clock(), detail)
        self.ledger.commit(name, done.persisted, done.record, state, applied)
        self.report.ended(name, done.ended)
        self._keep_copy(rendered, target, done.record, revision.state)
        self._warn_unverified(rendered, target, revision.state)
        self.metrics.environment_status(name, target.kind, revision.short, sync, env_health)
        result = (ReconcileResult.ERROR if done.errors or sync == SyncStatus.FAILED
                  else ReconcileResult.SUCCESS if done.outcomes else ReconcileResult.NOOP)
        interval = rendered.spec.interval
        if waiting or env_health == Health.PROGRESSING:
            interval = min(interval, WAIT_RECHECK)
        return Result(name, result, sync, env_health, message, done.outcomes, interval=interval,
                      revision=revision.sha, depends_on=rendered.spec.depends_on,
                      quiet=sync == SyncStatus.SYNCED and _quiet(rendered, target, env_health), claimed=done.claimed)

    def _applied(self, name: str, revision: Revision, done: _Pass, summary: str, message: str) -> Applied | None:
        """The pass's history row: its error, or its changes when it applied some or reached a new revision (none
        for a pass that changed nothing on the revision already applied)."""
        changes = _changes(done.outcomes, done.errors)
        if done.errors:
            return Applied(revision.sha, revision.commit_time, HistoryResult.ERROR, message, revision.signer, changes)
        if not done.outcomes and done.record.last_applied == revision.sha:
            return None
        if done.record.last_applied != revision.sha:
            self.metrics.commit_to_applied.labels(name).observe(max(0.0, self.clock() - revision.commit_time))
        return Applied(revision.sha, revision.commit_time, HistoryResult.SUCCESS, summary, revision.signer, changes)

    # -- stages ---------------------------------------------------------------------------------------
    def _gate(self, rendered: RenderedEnvironment, revision: Revision, loaded: Record) -> tuple[str, ...]:
        """The dependencies the environment waits for before it may apply `revision` (none: it may): a revision
        that changes what it renders waits until each dependency has applied it (or a later one) and is Healthy.
        `promotion_waiting` is 1 for each of those and 0 for its other dependencies."""
        name = rendered.spec.name
        waiting: dict[tuple[str, ...], float] = {(d,): 0.0 for d in rendered.spec.depends_on}
        if rendered.spec.depends_on and loaded.last_applied != revision.sha and not (
                loaded.last_applied and self._renders_alike(rendered, loaded.last_applied)):
            for dependency in rendered.spec.depends_on:
                state, applied = self.ledger.state(dependency), self.ledger.load(dependency).last_applied
                if (state is None or applied is None or state.health_status != Health.HEALTHY
                        or not self.source.contains(applied, revision.sha)):
                    waiting[(dependency,)] = 1.0
        self.report.gate(name, waiting)
        return tuple(d for (d,), value in waiting.items() if value)

    def _warn_unverified(self, rendered: RenderedEnvironment, target: Target, state: SourceState) -> None:
        """Tell the target's users, once per head, that the branch head is not applied (unverified)."""
        unverified, name = state.unverified, rendered.spec.name
        if unverified and isinstance(target, ReportsEvents) and self._warned.get(name) != unverified[0]:
            target.report_warning(rendered.spec, "Unverified", f"revision {unverified[1]}; the last verified "
                                  f"revision stays applied")
            self._warned[name] = unverified[0]

    def _renders_alike(self, rendered: RenderedEnvironment, sha: str) -> bool:
        """The environment renders the same objects at `sha` (its revision annotation aside)."""
        try:
            before = render(self.source.revision(sha).tree, rendered.spec.name, sha, self.targets)
        except RayGitopsError:
            return False
        return _objects(before) == _objects(rendered)

    def forget(self, name: str) -> None:
        """Take the target's ledger copy again at `name`'s next reconcile: another daemon replica held it
        meanwhile and may have written it (the daemon's loop calls it when its replica gains the shard)."""
        self._adopted.pop(name, None)

    def _adopt(self, rendered: RenderedEnvironment, target: Target, record: Record) -> Record:
        """Once per process: take the ledger copy the target keeps (a new leader, an empty state dir)."""
        name = rendered.spec.name
        if not isinstance(target, KeepsLedger):
            return record
        if name not in self._adopted:
            copy = target.load_ledger(rendered.spec)
            record = record.merged(copy, _spec_hashes(rendered)) if copy is not None else record
            self._adopted[name] = copy or LedgerSnapshot()
        return record

    def _keep_copy(self, rendered: RenderedEnvironment, target: Target, record: Record, state: SourceState) -> None:
        """Write the target's copy of the ledger when it changed."""
        snapshot = replace(record.snapshot(), verified=state.verified)
        if isinstance(target, KeepsLedger) and snapshot != self._adopted.get(rendered.spec.name):
            target.save_ledger(rendered.spec, snapshot)
            self._adopted[rendered.spec.name] = snapshot

    def _observe(self, rendered: RenderedEnvironment, target: Target, record: Record,
                 controlled: tuple[RunReport, ...] = ()) -> tuple[dict[ObjectRef, LiveObject], Record, list[JobRun]]:
        """Live objects, every job run moved forward in the record (from the live RayJobs' status, the same
        KubeRay shape on every target, from the target's own reports, a run deleted unseen, and from what its
        control step reported, `controlled`), and the runs first seen to end."""
        refs = set(record.inventory) | {d.ref for d in rendered.objects}
        observation = target.observe(rendered, refs, record.pending)
        reports = [(o.status["jobId"], o.ref.name, o.status["jobStatus"], parse_time(o.status.get("startTime")),
                    parse_time(o.status.get("endTime"))) for o in observation.live.values()
                   if o.ref.kind == "RayJob" and o.status.get("jobId") and o.status.get("jobStatus")]
        reports += [(r.submission_id, r.job, r.status, r.start_time, r.end_time)
                    for r in (*controlled, *observation.runs)]
        ended = []
        hashes = _spec_hashes(rendered) if any(report[0] not in record.runs for report in reports) else {}
        for report in reports:
            record, run = record.seen(*report, spec_hash=hashes.get(report[0], ""))
            if run is not None:
                ended.append(run)
        return observation.live, record, ended

    def _plan(self, rendered: RenderedEnvironment, target: Target, live: dict[ObjectRef, LiveObject],
              record: Record) -> tuple[list[PlanItem], dict[ObjectRef, dict[str, float]]]:
        """The plan, with the worker groups that left Git drained first (`planner.drain`), and those groups per
        RayCluster with the time their draining started (as the last report said, else now)."""
        previous = self.ledger.state(rendered.spec.name)
        clusters = (previous.detail.get("clusters") or {}) if previous else {}
        since = {d.ref: (clusters.get(d.ref.name) or {}).get("draining") or {} for d in rendered.objects
                 if d.ref.kind == "RayCluster"}
        planned, draining = planner.drain(rendered, live, since, self.clock())
        items = planner.plan(planned, live, record.inventory, record.finished, self.options,
                             target.expected(planned, live), operator=not isinstance(target, Controls))
        for index, item in enumerate(items):
            if item.ref in draining and item.action == Action.UPDATE:
                groups = ", ".join(sorted(draining[item.ref]))
                items[index] = replace(item, reason=f"worker group(s) {groups} left Git: scaled to 0 first (replicas, "
                                       f"min and max 0); removed from the spec once their nodes are gone",
                                       flags=item.flags | {Flag.DRAINING})
        return items, draining

    @staticmethod
    def _claim(name: str, items: list[PlanItem], record: Record) -> Record:
        """Own what is about to be created, and the runs about to be submitted, before doing it."""
        for item in items:
            if item.action in CREATES and item.ref.kind == "RayJob" and item.desired is not None:
                record = record.submitted(item.desired.run_id(name), item.ref.name, item.desired.spec_hash)
        return record.with_inventory(record.inventory | {i.ref for i in items if i.action in CREATES})

    def _apply(self, rendered: RenderedEnvironment, items: list[PlanItem], target: Target, context: ApplyContext,
               drifted: dict[ObjectRef, LiveObject | None] | None = None
               ) -> tuple[list[tuple[PlanItem, Outcome]], dict[ObjectRef, str]]:
        """Apply the changes one by one (one failure does not stop the others): the outcomes, and the error of each
        object that failed (`<object> <action> failed: <why>`). A change that sets back a drifted
        object (`drifted`: its live state) is a correction: counted, logged and reported with the managers that
        changed it."""
        outcomes: list[tuple[PlanItem, Outcome]] = []
        errors: dict[ObjectRef, str] = {}
        name = rendered.spec.name
        events = target if isinstance(target, ReportsEvents) else None
        for index, item in enumerate(items):
            if item.action not in CHANGES:
                continue
            if self.stopping.is_set():
                left = sum(1 for i in items[index:] if i.action in CHANGES)
                raise Interrupted(f"stopping: {left} change(s) left for the next start", outcomes)
            try:
                outcome = target.apply(item, context)
            except Unreachable as exc:  # the others would fail alike: one line, the rest wait for the next cycle
                left = sum(1 for i in items[index + 1:] if i.action in CHANGES)
                log.error("environment %s: %s %s failed: %s (%d more change(s) wait for the next attempt)",
                          name, item.ref, item.action.value, exc, left)
                errors[item.ref] = f"{item.ref} {item.action.value} failed: {exc}"
                outcomes.append((item, Outcome.FAILED))
                break
            except Exception as exc:  # one object's failure must not stop the others
                log.error("environment %s: %s %s failed: %s", name, item.ref, item.action.value, exc)
                errors[item.ref] = f"{item.ref} {item.action.value} failed: {exc}"
                outcomes.append((item, Outcome.FAILED))
                if events is not None:
                    events.report_event(item, Outcome.FAILED, f"{item.action.value} failed: {exc}", context)
                continue
            if drifted and item.ref in drifted:
                self._corrected(name, item, drifted[item.ref], context, events)
            else:
                log.info("environment %s: %s %s (%s)", name, item.ref, outcome.value, item.reason)
                if events is not None and item.action not in FIRST_WRITES:
                    events.report_event(item, outcome, f"{outcome.value}: {item.reason}", context)
            self.metrics.apply_total.labels(name, item.ref.kind, item.action.value).inc()
            outcomes.append((item, outcome))
        return outcomes, errors

    def _corrected(self, name: str, item: PlanItem, live: LiveObject | None, context: ApplyContext,
                   events: ReportsEvents | None) -> None:
        """A drift set back to Git: `drift_corrections_total`, one log line and an Event naming who changed it."""
        managers = changed_by(live.manifest, item.changes) if live is not None else []
        who = f" (changed by {', '.join(managers)})" if managers else ""
        what = ", ".join(item.changes) or "the object (it was gone)"
        message = f"drift corrected: {what} set back to Git's value{who}"
        self.metrics.drift_corrections.labels(name, item.ref.kind).inc()
        log.info("environment %s: %s %s", name, item.ref, message)
        if events is not None:
            events.report_event(item, Outcome.CONFIGURED, message, context, reason="DriftCorrected")

    @staticmethod
    def _inventory(rendered: RenderedEnvironment, items: list[PlanItem], outcomes: list[tuple[PlanItem, Outcome]],
                   live: dict[ObjectRef, LiveObject]) -> set[ObjectRef]:
        """Objects we own after this reconcile: live desired ones (not another environment's), failed or untried
        deletes, refused prunes."""
        done = {i.ref for i, o in outcomes if o != Outcome.FAILED}
        failed = {i.ref for i in items if i.action in CHANGES and i.ref not in done}
        foreign = {i.ref for i in items if Flag.OWNED_ELSEWHERE in i.flags}
        keep = {d.ref for d in rendered.objects if (d.ref in live or d.ref in failed) and d.ref not in foreign}
        kept_prunes = {i.ref for i in items if i.desired is None and (i.action == Action.SKIP or i.ref in failed)}
        return keep | kept_prunes

    @staticmethod
    def _sync(done: _Pass, waiting: str, state: SourceState) -> tuple[SyncStatus, str, str]:
        """(sync status, message, summary of the changes): a failure first (an object another environment owns
        is one), then what keeps the environment from the branch head (an unverified head, failing fetches, a
        promotion gate), then a refused prune or an object another environment also names (`shared`)."""
        refused = [i for i in done.items if Flag.PRUNE_REFUSED in i.flags]
        foreign = [f"{i.ref} {i.reason}" for i in done.items if Flag.OWNED_ELSEWHERE in i.flags]
        summary = "; ".join(f"{i.ref} {o.value}" for i, o in done.outcomes) or "no changes"
        if done.errors or foreign:
            return SyncStatus.FAILED, "; ".join([*done.errors.values(), *foreign]), summary
        if state.unverified:
            return SyncStatus.UNVERIFIED, f"Unverified: {state.unverified[1]}", summary
        if state.failure:
            return SyncStatus.STALE, f"Stale: {state.failure}", summary
        if waiting:
            return SyncStatus.WAITING, waiting, summary
        if refused or done.shared:
            return SyncStatus.OUT_OF_SYNC, "; ".join([i.reason for i in refused] + done.shared), summary
        return SyncStatus.SYNCED, summary, summary

    def _shared(self, name: str, items: list[PlanItem],
                live: dict[ObjectRef, LiveObject]) -> tuple[list[str], tuple[str, ...]]:
        """Record the objects `name` found owned by another environment. The reports of the other environments that
        found one of `name`'s (one object, one environment: both say so), and the owners whose report this changed
        (they should look again)."""
        found = {i.ref: planner.owner(live[i.ref]) for i in items if Flag.OWNED_ELSEWHERE in i.flags}
        mine = {i.ref for i in items if i.desired is not None}
        with self._lock:
            before, self._foreign[name] = self._foreign.get(name, {}), found
            reports = sorted(f"{ref} is also in environment {other} (one object, one environment: {other} does not "
                             f"apply it)" for other, refs in self._foreign.items() if other != name
                             for ref, owner in refs.items() if owner == name and ref in mine)
        claimed = {owner for ref, owner in {**before, **found}.items() if before.get(ref) != found.get(ref)}
        return reports, tuple(sorted(claimed - {name, ""}))

    # -- reports --------------------------------------------------------------------------------------
    def _failed(self, name: str, revision: Revision, message: str, retry_after: float | None = None) -> Result:
        env_health = self.report.held(name, SyncStatus.FAILED, f"revision {revision.short}: {message}")
        return Result(name, ReconcileResult.ERROR, SyncStatus.FAILED, env_health, message, retry_after=retry_after)

    def _suspended(self, name: str, revision: Revision, target: str, reason: str, interval: float = 60.0) -> Result:
        """Report `Suspended` and touch nothing (Git's `spec.suspend: true` or the ledger's flag)."""
        self.report.suspended(name, revision, target, reason)
        return Result(name, ReconcileResult.NOOP, SyncStatus.SUSPENDED, Health.UNKNOWN, reason, interval=interval)


def _objects(rendered: RenderedEnvironment) -> dict[ObjectRef, dict[str, Any]]:
    """The rendered objects without the revision annotation (what a new commit alone changes)."""
    out = {}
    for desired in rendered.objects:
        meta = desired.manifest.get("metadata") or {}
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != REVISION_ANNOTATION}
        out[desired.ref] = {**desired.manifest, "metadata": {**meta, "annotations": annotations}}
    return out





def _quiet(rendered: RenderedEnvironment, target: Target, health: Health) -> bool:
    """Whether only a watch event or Git can change what the next reconcile of a Synced environment would find,
    whatever its health: its target watches every object and the Ray Pods (a status change wakes it too), it
    has no kind that moves with the clock (UNQUIET), and it is not Progressing through a `Recreate` upgrade's
    grace (a status the operator may never update is trusted after RECREATE_GRACE_SECONDS)."""
    if not (isinstance(target, Watches) and target.watches(rendered.spec)):
        return False
    if any(d.ref.kind in UNQUIET for d in rendered.objects):
        return False
    return health != Health.PROGRESSING or not any(
        ((d.manifest.get("spec") or {}).get("upgradeStrategy") or {}).get("type") == "Recreate"
        for d in rendered.objects)


def _spec_hashes(rendered: RenderedEnvironment) -> dict[str, str]:
    """Submission id -> spec hash of the run of each RayJob in Git: how a run the ledger did not record (found
    live, or in the target's copy) gets its spec hash."""
    return {d.run_id(rendered.spec.name): d.spec_hash for d in rendered.objects if d.ref.kind == "RayJob"}


def _unclaimed(name: str, items: list[PlanItem], outcomes: list[tuple[PlanItem, Outcome]], record: Record) -> Record:
    """`record` without the claims of the runs whose submission failed or was not made (the target refused it, it
    was unreachable, the daemon is stopping): their RayJobs do not exist, so a later look must not take them for
    runs deleted before they were seen to end (never re-run); they are claimed again when submitted again. A
    RayJob the target did create despite an error is found live, and its run recorded, by the next look."""
    made = {item.ref for item, outcome in outcomes if outcome != Outcome.FAILED}
    runs = {item.desired.run_id(name) for item in items
            if item.action in CREATES and item.ref.kind == "RayJob" and item.desired is not None
            and item.ref not in made}
    return record.unclaimed(runs)


def _changes(outcomes: list[tuple[PlanItem, Outcome]], errors: dict[ObjectRef, str]) -> tuple[Change, ...]:
    """The history row's per-object changes: each outcome, with the error of the objects that failed."""
    return tuple(Change(item.ref, item.action, outcome, errors.get(item.ref, "")) for item, outcome in outcomes)




