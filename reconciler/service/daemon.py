"""The daemon: the wiring of the Git source, the pipeline, the targets, the schedule, leader
election and the HTTP endpoints, and the main loop.

Started by `ray-gitops run`. The main loop fetches Git (every `interval`, or at once for a webhook or a
`ray-gitops reconcile`), asks the schedule which environments are
due and hands them to a pool of `concurrency` threads; each environment has its own interval and
error backoff, so a slow or broken one never holds the others. An environment that left Git is
removed the same way, behind the removal guard; a change someone else made to an object (seen by a
watch) checks its environment at once. On stop it lets each running
reconcile finish the object it is applying, then closes the targets (the local target stops the
Ray processes it started). With leader election, only the Lease holder fetches and reconciles; a
follower serves /metrics, /healthz and a 200 /readyz (it stands by: a rolling update can proceed),
and a leader that loses the Lease schedules nothing new while its running reconciles finish. With
`shards`, every replica reconciles the environments of the shards it holds (`shards.py`), asking
`owns()` as a leader asks `leading()`; a shard lost or handed over schedules nothing new.

Thread ownership: the main loop owns the schedule and is the only caller of `source.fetch` (every `interval`,
or at the next turn once `fetch_now` is set: a webhook, an ask, a new term or shard);
environment threads read only the fetched revision's immutable snapshot; `_finished` callbacks
run in those threads and touch the schedule under `_lock`; the targets' watch threads call
`changed`, which only records the environment under `_lock` and, after DEBOUNCE, forces it in the
schedule and wakes the loop. What each environment's last reconcile read (`_inputs`, for `_advance`)
is written by the finishing threads and read by the loop, under `_lock`. The HTTP threads read the metrics
registry and call `healthy`/`ready`/`trigger`, which are thread-safe, and the status page's API,
which reads the ledger and hands slow work (plan previews, commit lookups) to the page's worker
thread; it reads `graph` (the `dependsOn` graph at the head), which the loop replaces whole. The control
socket's threads (`ray-gitops reconcile`) only add asks and wait: the loop takes them before it fetches
and binds them to that fetch, the finishing threads answer them (`control.Asks` is thread-safe). The
finishing threads also queue notifications of state changes (`_reported`, under `_lock`); the
notifier's own threads send them. A preview and a reconcile of one environment never overlap: both
hold its `_guard`. The `shards` thread calls `running()`, which reads `_running` under `_lock` (where
`_submit` checks `owns` and registers its reconciles), and reports newly held shards, which are recorded
under `_lock` for the loop to act on.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from ..errors import ConfigError, RayGitopsError
from ..metrics import Metrics
from ..model import Health, ReconcileResult, SyncStatus
from ..pipeline import planner
from ..pipeline.ledger import Ledger
from ..pipeline.reconcile import Pipeline, Result
from ..pipeline.render import ENVIRONMENT_FILE, ROOT, depends_on, in_git, list_environments, waves
from ..pipeline.source import GitSource, Inputs, Revision, redact, unchanged
from ..targets import Registry
from . import control, notify, webhook
from .commits import Commits
from .config import Settings
from .leader import LeaderElectionOptions, LeaderElector, lease_client
from .schedule import Schedule
from .shards import Shards, shard_of
from .worker import Worker

if TYPE_CHECKING:
    from .page import StatusPage

log = logging.getLogger(__name__)
SHUTDOWN_GRACE = 20.0  # seconds a stop waits for the running reconciles (each stops after the object it applies)
STUCK = 600.0  # seconds after which a running reconcile is reported stuck (on its environment alone)
STALL = 900.0  # seconds without a finished reconcile, while some run, after which /healthz fails (restart)
DEBOUNCE = 1.0  # seconds from a change someone else made to its environment's drift check (more changes: one check)


class Daemon:
    """One Git source, its environments, their targets, and the HTTP endpoints."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, process=registry is None)
        self.ledger = Ledger(settings.state_dir)
        self.source = GitSource(settings.repo, settings.branch, settings.state_dir / "git", self.metrics.git_request,
                                settings.verifier(), heads=self)
        self.targets = Registry(settings.runtime(self.metrics, self.changed, writes=True))
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.fetch_now = threading.Event()  # Git may have changed (a webhook, an ask, a new term): fetch at this turn
        self._next_fetch = 0.0  # when the loop polls Git next (turns woken for a due environment do not fetch)
        self.pipeline = self._pipeline()
        self.schedule = Schedule()
        self.hooks = self._hooks()
        self._lock = threading.Lock()  # around the schedule: the loop and the finishing threads use it
        self._heartbeat = time.monotonic()
        self._asleep_until = 0.0  # when the main loop wakes by itself (a reconcile due sooner wakes it earlier)
        self._progress = time.monotonic()  # a reconcile finished, or none was running
        self._started: dict[str, float] = {}  # environment -> when its current reconcile was submitted
        self._stuck: set[str] = set()  # environments whose reconcile runs longer than STUCK
        self._selected: list[str] = []  # the environments in Git (within --environment) at the last turn
        self._shown: list[str] = []  # those and the ones the ledger knows (removed, or held by the removal guard)
        self._refusal: frozenset[str] = frozenset()  # the environments whose removal the guard refused (said once)
        self._listed = ""  # the revision whose environments were last listed (and logged)
        self._running: dict[str, Future[Result]] = {}
        self._depends_on: dict[str, tuple[str, ...]] = {}  # environment -> the ones it waits for
        self.graph: dict[str, tuple[str, ...]] = {}  # the same at the head, for the page (replaced whole, not changed)
        self._inputs: dict[str, Inputs] = {}  # environment -> what its last reconcile read, if it may be advanced
        self._reached: dict[str, tuple[str, str]] = {}  # environment -> (revision, health) last reported
        self._guards: dict[str, threading.Lock] = {}  # environment -> held while it reconciles or is previewed
        self._touched: set[str] = set()  # environments whose objects someone else changed (checked after DEBOUNCE)
        self._debounce: threading.Timer | None = None
        self.head: Revision | None = None  # the last revision fetched
        self.worker = Worker()  # the status page's slow work
        self.commits = Commits(self.worker, self.source.revision)
        self.elector = self._elector() if settings.leader_election and not settings.once else None
        self._led = False  # leading at the last turn of the loop
        self.shards = self._shards() if settings.shards and not settings.once else None
        self._gained: set[int] = set()  # shards newly held, their environments' ledger copies not yet re-read
        self.asks = control.Asks()  # `ray-gitops reconcile` requests (the control socket)
        self.notifier = notify.Notifier(settings.notify_destinations(), self.metrics, redact(settings.repo),
                                        settings.branch)
        self._reported: dict[str, tuple[SyncStatus, str] | None] = {}  # environment -> (sync, revision) last notified
        self._generation = 0  # fetches done by the main loop; each submitted reconcile carries the one it follows

    def _pipeline(self) -> Pipeline:
        return Pipeline(self.source, self.ledger, self.metrics, self.targets, stopping=self.stopping,
                        scope=self._scope(), checkouts=self.settings.state_dir / "checkouts")

    def _scope(self) -> frozenset[str] | None:
        """The environments this daemon reconciles (None: all of them)."""
        return frozenset(self.settings.environments) or None

    def _page(self) -> StatusPage | None:
        """The status page and its API (off with `ui: false`); plans are previewed by a pipeline of their own."""
        if not self.settings.ui:
            return None
        from .api import Api  # only a serving daemon has a page: `run --once` does not load it
        from .page import StatusPage
        from .plans import Plans
        previews = Pipeline(self.source, self.ledger, self.metrics, self.targets, scope=self._scope())
        plans = Plans(self.worker, previews.preview, lambda: self.head, self._guard, self._reconciled_at)
        return StatusPage(Api(self.ledger, self.source, plans, self.commits, lambda: self.head,
                              lambda: self._shown, self.leading, lambda: self.graph,
                              self.shards))

    def _guard(self, name: str) -> threading.Lock:
        """The lock held while `name` reconciles or is previewed for the status page."""
        with self._lock:
            return self._guards.setdefault(name, threading.Lock())

    def _reconciled_at(self, name: str) -> float:
        state = self.ledger.state(name)
        return state.updated_at if state else 0.0

    def _reconcile(self, name: str, revision: Revision) -> Result:
        with self._guard(name):
            return self.pipeline.reconcile(name, revision)

    def _hooks(self) -> webhook.Receiver | None:
        s = self.settings
        try:
            secret = webhook.read_secret(s.webhook_secret, s.webhook_secret_file)
        except OSError as exc:
            raise ConfigError(f"webhook_secret_file {s.webhook_secret_file}: {exc.strerror}") from None
        return webhook.Receiver(secret, s.webhook_max_body, self.metrics, self.trigger) if secret else None

    def _lease_options(self) -> LeaderElectionOptions:
        """The Lease settings leader election and sharding share."""
        s = self.settings
        return LeaderElectionOptions(s.leader_election_id, s.leader_election_namespace,
                                     lease_client(s.kubeconfig, s.kube_context),
                                     lease_duration=s.leader_election_lease_duration,
                                     renew_deadline=s.leader_election_renew_deadline,
                                     retry_period=s.leader_election_retry_period)

    def _elector(self) -> LeaderElector:
        options = self._lease_options()
        gauge = self.metrics.leader.labels(options.identity)
        gauge.set(0)

        def changed(leading: bool) -> None:
            gauge.set(float(leading))
            self.trigger()
        return LeaderElector(options, changed)

    def _shards(self) -> Shards:
        options = self._lease_options()

        def changed(gained: set[int]) -> None:
            with self._lock:
                self._gained |= gained
            self.trigger()
        return Shards(self.settings.shards, options, self.running, changed, self.metrics)

    def running(self) -> set[str]:
        """The environments with a reconcile queued or running (thread-safe)."""
        with self._lock:
            return self._running_names()

    def owns(self, name: str) -> bool:
        """This replica may reconcile `name` now (always, without `shards`)."""
        return self.shards is None or self.shards.owns(name)

    def trigger(self) -> None:
        """Git changed (a verified webhook): fetch at once; the environments whose inputs changed are reconciled
        at once (`_advance`). Only wakes the loop: nothing is fetched or reconciled in the caller's (HTTP) thread."""
        self.fetch_now.set()
        self.wake.set()

    # -- the last verified head (GitSource's VerifiedHeads) --------------------------------------------
    def last_verified(self, url: str, branch: str) -> tuple[str, str] | None:
        return self.ledger.last_verified(url, branch)

    def record_verified(self, url: str, branch: str, revision: str, signer: str) -> None:
        self.ledger.record_verified(url, branch, revision, signer)

    def recalled(self) -> list[str]:
        """What the targets' ledger copies remember (this state dir remembers nothing: an emptyDir was lost)."""
        return self.targets.verified_heads()

    def changed(self, environment: str) -> None:
        """A watch saw someone else change an object of `environment` (a hand edit, another applier, its Pods):
        its drift check runs within DEBOUNCE seconds, whatever its interval; a burst of changes makes one check.
        Called from the watch threads; only wakes the loop."""
        with self._lock:
            self._touched.add(environment)
            if self._debounce is None:
                self._debounce = threading.Timer(DEBOUNCE, self._check_touched)
                self._debounce.daemon = True
                self._debounce.start()

    def _check_touched(self) -> None:
        with self._lock:
            touched, self._touched, self._debounce = self._touched, set(), None
            self.schedule.force(touched & set(self._selected))
        self.wake.set()

    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def _lead(self) -> bool:
        """This turn's leadership. A new term starts with a fresh pipeline, so each environment adopts
        again the ledger copy its target keeps (another leader may have written it); a lost term cancels
        the reconciles still queued (running ones finish)."""
        leading = self.leading()
        if leading and not self._led and self.elector is not None:
            self.pipeline = self._pipeline()
        if not leading:
            with self._lock:
                running = list(self._running.values())
            for future in running:
                future.cancel()
        self._led = leading
        if self.shards is not None:
            self._share(self.shards)
        return leading

    def _share(self, shards: Shards) -> None:
        """This turn's shards: reconciles queued for environments no longer owned are cancelled (running ones
        finish); the environments of newly held shards run at once, adopting again the ledger copy their target
        keeps (the replica that held them before wrote it)."""
        with self._lock:
            gained, self._gained = self._gained, set()
            running = dict(self._running)
        for name, future in running.items():
            if not self.owns(name):
                future.cancel()
        later: set[int] = set()  # a shard held again while a reconcile of its last term still runs: next turn
        taken: list[str] = []
        for name in self._selected:
            shard = shard_of(name, shards.count)
            if shard in gained and name in running and not running[name].done():
                later.add(shard)
            elif shard in gained:
                self.pipeline.forget(name)
                taken.append(name)
        with self._lock:
            self._gained |= later
            for name in taken:  # what it read when this replica last reconciled it says nothing now
                self._inputs.pop(name, None)
            self.schedule.force(taken)  # checked at once by their new owner
        self.metrics.environments_owned.labels(shards.identity).set(sum(map(self.owns, self._selected)))

    # -- scheduling ----------------------------------------------------------------------------------
    def environments(self, revision: Revision) -> list[str]:
        """The environments to reconcile at `revision`; problems outside them are logged once per revision."""
        found = list_environments(revision.tree)
        known = set(self.ledger.sync_statuses())
        # an environment whose directory is still there but whose environment.yaml cannot be read is reconciled
        # (it fails, naming the file), never taken for removed
        present = sorted({*found, *(name for name in known - set(found) if in_git(revision.tree, name))})
        wanted = list(self.settings.environments) or present
        gone = known - set(present)  # left Git: removed, not reconciled
        if revision.sha != self._listed:
            self._listed = revision.sha
            self.graph = {name: depends_on(revision.tree, name) for name in wanted if name in found}
            for name in wanted:
                if name not in present and name not in gone:
                    log.error("environment %s: not found under environments/ at revision %s", name, revision.short)
            for path, reason in revision.tree.problems(ROOT):
                if path.count("/") < 2 or path.split("/")[1] not in present:
                    log.error("%s: %s (revision %s; ignored)", path, reason, revision.short)
        return [name for name in wanted if name not in gone]

    def _finished(self, name: str, revision: Revision, generation: int, future: Future[Result]) -> None:
        with self._lock:
            self._progress = time.monotonic()
            if self._running.get(name) is future:  # done: its result (the objects applied) is not kept
                del self._running[name]
            if future.cancelled():
                self.schedule.cancelled(name)
                return
            result = future.result()
            again = self.schedule.finished(name, revision.sha, result.result == ReconcileResult.ERROR, result.interval,
                                           result.retry_after, result.quiet)
            again = again or self.schedule.next_time(name) < self._asleep_until  # due before the loop would wake
            self._depends_on[name] = result.depends_on
            self._notify(name, result, revision.sha)
            if result.result != ReconcileResult.ERROR and result.sync_status == SyncStatus.SYNCED:
                self._inputs[name] = result.inputs
            else:  # its next revision reconciles it, whatever changed
                self._inputs.pop(name, None)
            again = self._reach(name, (result.revision, result.health_status.value)) or again
            if result.claimed:  # their "also in environment ..." report changed: they look now
                self.schedule.force(result.claimed)
                again = True
        failed = result.result == ReconcileResult.ERROR or result.sync_status in (
            SyncStatus.FAILED, SyncStatus.STALE, SyncStatus.UNVERIFIED)
        self.asks.finished(name, generation, answer(result), failed)
        if again:  # a webhook came while it ran, or a dependency moved: run it (them) now
            self.wake.set()

    def _notify(self, name: str, result: Result, head: str) -> None:
        """Queue a notification when `name`'s state changed (from what the ledger held before its first reconcile in
        this process, then from its last result). Under `_lock`, in the environment's thread. A reconcile cut short
        by a stop reports nothing (its ledger state did not change)."""
        if self.stopping.is_set():
            return
        before = self._reported.get(name)
        event = notify.transition(before, result.sync_status, result.revision, result.result == ReconcileResult.SUCCESS)
        reported = self._reported[name] = (result.sync_status, result.revision or (before[1] if before else ""))
        if event:
            self.notifier.notify(event, name, result.sync_status, result.health_status.value,
                                 reported[1], before[1] if before else "", head, result.message)

    def _reach(self, name: str, reached: tuple[str, str]) -> bool:
        """`name` is at (revision, health): when that is new, a promotion may go ahead and its dependents look now
        (True: some were forced). Under `_lock`."""
        if self._reached.get(name) == reached:
            return False
        self._reached[name] = reached
        dependents = [e for e, deps in self._depends_on.items() if name in deps]
        self.schedule.force(dependents)
        return bool(dependents)

    def _advance(self, revision: Revision, names: list[str]) -> list[str]:
        """Changed environments first: of `names`, those last reconciled at another revision, Synced, and reading
        nothing `revision` changed (`unchanged`) move to it in the schedule without a reconcile; the others stay due
        at once. Returns the moved ones: `_advanced` records them after the changed ones started, so a webhook push
        that changes one environment among a thousand applies it without waiting for the rest."""
        with self._lock:
            running = self._running_names()
            candidates = {n: self._inputs[n] for n in names if n in self._inputs and self.schedule.at(n) not in (
                None, revision.sha) and n not in running}
        same = sorted(n for n, inputs in candidates.items() if unchanged(inputs, revision.tree))
        with self._lock:
            self.schedule.advance(same, revision.sha)
        return same

    def _advanced(self, revision: Revision, same: list[str]) -> None:
        """Record what `_advance` moved (status, history, metrics); their dependents look now."""
        if not same:
            return
        states = self.pipeline.advance(same, revision)
        with self._lock:
            moved = [self._reach(state.environment, (revision.sha, state.health_status.value)) for state in states]
        if any(moved):
            self.wake.set()

    def _running_names(self) -> set[str]:
        return {n for n, f in self._running.items() if not f.done()}

    def _submit(self, pool: ThreadPoolExecutor, revision: Revision, force: bool = False,
                asks: list[control.Ask] | None = None) -> None:
        """Start what is due at `revision` (everything when `force`), and the environments `asks` name (they are
        reconciled, not advanced)."""
        self._selected = self.environments(revision)
        removable = self._removals(revision, self._selected)
        names = self._selected + removable
        owned = [n for n in names if self.owns(n)]  # all of them without `shards`
        asked = self.asks.bind(asks or [], self._generation, revision.sha, owned)
        same = self._advance(revision, [n for n in self._selected if n not in asked and self.owns(n)]) \
            if self.leading() else []
        with self._lock:  # owned and registered at once: `Shards` hands a shard over only when `running()` is clear
            self.schedule.force(owned if force else asked)
            due = self.schedule.due([n for n in names if self.owns(n)], revision.sha) if self.leading() else []
            skipped, self.schedule.skipped = self.schedule.skipped, []
            for name in set(due) - set(self._reported):  # their state before this process: a restart notifies nothing
                state = self.ledger.state(name)
                self._reported[name] = (state.sync_status, state.revision) if state else None
            futures = {name: pool.submit(self._remove if name in removable else self._reconcile, name, revision)
                       for name in due}
            self._running.update(futures)
            self._started.update(dict.fromkeys(futures, time.monotonic()))
        for name in skipped:
            self.metrics.reconcile_skipped.labels(name).inc()
        for name, future in futures.items():
            future.add_done_callback(functools.partial(self._finished, name, revision, self._generation))
        self._advanced(revision, same)

    def _remove(self, name: str, revision: Revision) -> Result:
        with self._guard(name):
            return self.pipeline.remove(name, revision)

    def _removals(self, revision: Revision, present: list[str]) -> list[str]:
        """The environments that left Git at `revision` (known to the ledger, not yet removed, within
        `--environment`) and may be removed now. When the removal guard refuses them, none is: the refusal is
        reported once (log, `removals_refused`, each one's status) until a revision resolves it, whatever commits
        come meanwhile (it is keyed on what vanished, not on the revision)."""
        scope = set(self.settings.environments)
        states = {env: sync for env, sync in self.ledger.sync_statuses().items() if not scope or env in scope}
        self._shown = sorted({*present, *states})
        known = {env for env, sync in states.items() if sync != SyncStatus.REMOVED}
        vanished = known - set(present)
        refused = planner.removal_refused(known, vanished, self.settings.removal_max_fraction)
        self.metrics.removals_refused.set(len(vanished) if refused else 0)
        if not refused:
            self._refusal = frozenset()
            return sorted(vanished)
        if self._refusal != vanished:
            self._refusal = frozenset(vanished)
            log.error("removal refused at revision %s: %s (%s); nothing is pruned", revision.short, refused,
                      ", ".join(sorted(vanished)))
            for name in sorted(vanished):
                self.pipeline.hold_removal(name, revision, refused)
        return []

    def run_once(self) -> bool:
        """Reconcile every selected environment once, a `dependsOn` chain in order: a dependent runs once its
        dependencies are Healthy at the revision, each link waiting at most `dependency_timeout`. Remove the
        environments that left Git. True only if everything succeeded and nothing is left waiting; a dependency
        that does not exist, cannot be read or is not selected is a ConfigError (exit 2), never a silent wait."""
        revision = self.source.fetch()
        names = self.environments(revision)
        graph = {name: depends_on(revision.tree, name) for name in names}
        for name, dependencies in graph.items():
            for dependency in (d for d in dependencies if d not in names):
                if not in_git(revision.tree, dependency):
                    why = f"does not exist under {ROOT}/ at revision {revision.short}"
                elif self.settings.environments:
                    why = f"is not selected (--environment {' --environment '.join(names)}); select it too"
                else:
                    why = f"has no readable {ROOT}/{dependency}/{ENVIRONMENT_FILE} at revision {revision.short}"
                raise ConfigError(f"environment {name} depends on {dependency}, which {why}")
        removable = self._removals(revision, names)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="env") as pool:
            removed = pool.map(lambda n: self.pipeline.remove(n, revision), removable)
            results = dict(zip(removable, removed, strict=True))
            results.update(self._in_order(pool, revision, graph))
        for result in results.values():
            log.info("environment %s: %s, sync %s, health %s", result.environment, result.result,
                     result.sync_status, result.health_status)
        waiting = [r.environment for r in results.values() if r.sync_status == SyncStatus.WAITING]
        if waiting:
            log.error("run --once: %s still waiting for a dependency after %.0f s (dependency_timeout)",
                      ", ".join(waiting), self.settings.dependency_timeout)
        return bool(names) and not waiting and all(r.result != ReconcileResult.ERROR for r in results.values())

    def _in_order(self, pool: ThreadPoolExecutor, revision: Revision,
                  graph: dict[str, tuple[str, ...]]) -> dict[str, Result]:
        """Reconcile `graph`'s environments wave by wave (dependencies first). While one waits for a dependency,
        the dependencies are reconciled again (their health moves on) every 2 s, until it may go ahead or
        `dependency_timeout` has passed."""
        results: dict[str, Result] = {}
        deadline = time.monotonic() + self.settings.dependency_timeout

        def run(names: list[str]) -> None:  # each result without its objects: a thousand would be kept till the end
            results.update(zip(names, pool.map(lambda n: replace(self.pipeline.reconcile(n, revision), outcomes=[],
                                                                 inputs=frozenset()), names), strict=True))
        for wave in waves(graph):
            run(wave)
            waiting = [n for n in wave if results[n].sync_status == SyncStatus.WAITING]
            while waiting and time.monotonic() < deadline and not self.stopping.wait(2.0):
                run(sorted({d for n in waiting for d in graph[n] if results[d].health_status != Health.HEALTHY}))
                run(waiting)
                waiting = [n for n in waiting if results[n].sync_status == SyncStatus.WAITING]
        return results

    def serve(self) -> bool:
        """Run until `stop()`: poll Git every `interval`, reconcile what is due (only while leading). False when
        a reconcile was still running SHUTDOWN_GRACE seconds after the stop (its thread is left behind: the
        caller should end the process without waiting for it)."""
        from . import http  # only a serving daemon listens
        page = self._page()
        server = http.serve(self.settings.host_port, http.Endpoints(self.registry, self.healthy, self.ready,
                                                                     self.hooks, page, self.settings.allowed_hosts))
        sock = self._control()  # after the port: a daemon that cannot bind it leaves no socket behind
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="env")
        if page is not None:
            self.worker.start()
        self.notifier.start()
        if self.elector is not None:
            self.elector.start()
        if self.shards is not None:
            self.shards.start()
        try:
            while not self.stopping.is_set():
                self._heartbeat = time.monotonic()
                self.wake.clear()
                asks = self.asks.take()  # made before this turn's fetch
                leading = self._lead()
                if leading:
                    self._turn(pool, asks, self._fetching(bool(asks)))
                else:
                    self.asks.fail(asks, "this replica does not hold the leader Lease: ask the leader's daemon")
                self._watch_running()
                with self._lock:
                    pause = self.schedule.sleep(self._next_fetch - time.monotonic()) if leading \
                        else self.settings.interval
                    self._asleep_until = time.monotonic() + pause
                self.wake.wait(pause)
        finally:
            log.info("stopping: finishing the current steps")
            self.asks.fail(None, "the daemon is stopping")
            if sock is not None:
                sock.stop()
            self.worker.stop()  # before the targets close: a preview in progress ends first
            pool.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                running = {n: f for n, f in self._running.items() if not f.done()}
            _, left = wait(running.values(), timeout=SHUTDOWN_GRACE)
            if left:
                log.error("stopping: %d reconcile(s) still running after %.0f s (%s); leaving them behind", len(left),
                          SHUTDOWN_GRACE, ", ".join(n for n, f in running.items() if f in left))
            self.targets.close()
            self.notifier.stop()  # after the last reconcile: its notification is sent
            if self.elector is not None:  # after the last reconcile: the next leader never overlaps it
                self.elector.stop(release=True)
            if self.shards is not None:  # likewise: the next holders of our shards never overlap us
                self.shards.stop()
            server.shutdown()
            server.server_close()
            self.ledger.close()
            log.info("stopped")
        return not left

    def _fetching(self, asked: bool) -> bool:
        """Whether this turn fetches: every `interval`, and at once for a webhook, an ask or a new term. A turn woken
        because an environment's own interval came (at 1,000 environments, one every 0.2 s) schedules at the
        revision last fetched: a fetch each time cost more than the reconciles it served."""
        now = time.monotonic()
        if not (asked or self.fetch_now.is_set() or now >= self._next_fetch or self.head is None):
            return False
        self.fetch_now.clear()
        self._next_fetch = now + self.settings.interval
        return True

    def _turn(self, pool: ThreadPoolExecutor, asks: list[control.Ask], fetch: bool) -> None:
        """Fetch (when `fetch`) and schedule (`asks`: made before this fetch). A change in fetching (failing, or
        working again) or in the head's verification (a head refused, or verified again) re-reports every
        environment at once: the revision handed out stays the same then, so the schedule alone would report it
        only at each interval. Nothing here may end the loop: repository content and Git failures are only logged."""
        failing, unverified = self.source.failure is not None, self.source.unverified
        try:
            if fetch or self.head is None:
                revision = self.source.fetch()
                self._generation += 1
                self.head = revision
                self.commits.add(revision)
                changed = failing != (self.source.failure is not None) or unverified != self.source.unverified
            else:
                revision, changed = self.head, False
            self._submit(pool, revision, changed, asks)
        except RayGitopsError as exc:  # no revision yet: the source logged it; retried next turn
            log.debug("%s", exc)
            self.asks.fail(asks, str(exc))
        except Exception:  # a bug must not stop the other environments' schedule
            log.exception("scheduling failed; retrying next turn")
            self.asks.fail(asks, "scheduling failed (see the daemon's log)")

    def _control(self) -> control.ControlServer | None:
        """The control socket, serving; None (logged) when it cannot be made: the daemon runs without it."""
        try:
            sock = control.ControlServer(self.settings.state_dir, self.asks, self.trigger)
        except (ConfigError, OSError) as exc:
            log.error("`ray-gitops reconcile` is unavailable: %s", exc)
            return None
        sock.start()
        return sock

    def _watch_running(self) -> None:
        """Progress and stuck reconciles: the loop made progress when a reconcile finished or none was running
        (`healthy` fails when it has made none for STALL seconds, so a stuck daemon is restarted); a reconcile
        running longer than STUCK seconds is reported on its environment alone (status, `reconcile_stuck`)."""
        now = time.monotonic()
        with self._lock:
            running = {n: f for n, f in self._running.items() if not f.done()}
            if not running:
                self._progress = now
            stuck = {n: self._started[n] for n in running if now - self._started.get(n, now) > STUCK}
        for name, since in stuck.items():
            if name not in self._stuck:
                log.error("environment %s: its reconcile has been running for %.0f s; it is stuck (its other "
                          "environments go on)", name, now - since)
                self.pipeline.report_stuck(name, time.time() - (now - since))
        for name in self._stuck - set(stuck):
            self.metrics.reconcile_stuck.remove(name)
        for name in stuck:
            self.metrics.reconcile_stuck.labels(name).set(1)
        self._stuck = set(stuck)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    # -- health ----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """After the first reconcile of every environment (with `shards`: of those it owns); a follower, or a
        replica that owns none, is ready as it is (standing by)."""
        if not self.leading():
            return True
        owned = [name for name in self._selected if self.owns(name)]
        if self.shards is not None and not owned:
            return True
        with self._lock:
            return self.schedule.reconciled(owned)

    def healthy(self) -> bool:
        """The main loop turns, and reconciles make progress (one finishes, or none is running)."""
        now = time.monotonic()
        return now - self._heartbeat < 3 * self.settings.interval + 60 and now - self._progress < max(
            STALL, 3 * self.settings.interval)


def answer(result: Result) -> dict[str, object]:
    """What `ray-gitops reconcile` prints of one environment's reconcile."""
    return {"environment": result.environment, "result": result.result.value, "sync_status": result.sync_status.value,
            "health_status": result.health_status.value, "revision": result.revision, "message": result.message}
