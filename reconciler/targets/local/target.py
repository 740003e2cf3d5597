"""The local target as the pipeline sees it (the Target protocol): it plays both the API server
(`store`) and the operator (`apply`, `clusters`, `serve`, `endpoints`, and its own loop: `control`), and reads
live state from Ray itself (`observe`, which only reads).

It keeps no copy of the ledger (the daemon's SQLite ledger under the state dir is the only one)
and reports no Events (the log is the record here): those optional capabilities are absent.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ...model import Action, EnvironmentSpec, LiveObject, Manifest, ObjectRef, Outcome, PlanItem, RenderedEnvironment
from ...pipeline.target import ApplyContext, Observation, RunReport, hide_secret_values
from . import apply, control, cron, limits, observe, serve
from .clusters import Clusters
from .endpoints import Endpoints
from .observe import cluster_name
from .options import LocalOptions
from .store import ObjectStore


class LocalTarget:
    """Local Ray clusters and jobs for every environment whose target is `local`."""

    kind = "local"

    def __init__(self, state_dir: Path) -> None:
        self.store = ObjectStore(state_dir / "local" / "objects")
        self.clusters = Clusters(state_dir / "local" / "clusters")
        self.endpoints = Endpoints()  # each RayService's address (opened by apply and control only)
        self._persist: dict[str, bool] = {}  # environment -> keep its processes when the daemon stops
        self._lock = threading.Lock()

    def observe(self, rendered: RenderedEnvironment[LocalOptions], refs: set[ObjectRef],
                pending_runs: frozenset[str]) -> Observation:
        """Objects as applied, with live state from Ray (reads only). A pending run Ray no longer knows is not
        reported: its RayJob looks absent, so the run is submitted again (same submission id). A pending run
        whose RayJob went after it ended (`DeleteSelf`) is reported with its final status."""
        environment = rendered.spec.name
        options = rendered.spec.target.options
        with self._lock:
            self._persist[environment] = options.persist
        cap = self.clusters.limits.per_group(rendered.spec)[0]
        live: dict[ObjectRef, LiveObject] = {}
        runs: list[RunReport] = []
        for ref in refs:
            record = self.store.load(environment, ref)
            if record is None:
                continue
            if ref.kind == "RayCluster":
                obj = observe.raycluster(self.clusters, environment, ref, record, cap)
            elif ref.kind == "RayJob":
                obj = observe.rayjob(self.clusters, ref, record)
            elif ref.kind == "RayCronJob":
                obj, reports = cron.observe(self.clusters, ref, record)
                runs += reports
            elif ref.kind == "RayService":
                obj = observe.rayservice(self.clusters, ref, record, cap)
            else:
                obj = LiveObject(ref, record["manifest"])
            if obj is not None:
                live[ref] = obj
        for run, info in self.store.buried(environment).items() if pending_runs else ():
            if run in pending_runs:
                status = info["status"]
                runs.append(RunReport(run, info["job"], status["jobStatus"], status.get("startTime"),
                                      status.get("endTime")))
        return Observation(live, tuple(runs))

    def control(self, spec: EnvironmentSpec[LocalOptions]) -> tuple[RunReport, ...]:
        """The operator's own step for the environment's applied objects (`control`): cron slots, a finished
        run's status, clean-ups after runs, a RayService's switch to its new cluster. Only a reconcile calls it,
        never a preview."""
        return tuple(control.control(self.clusters, self.store, self.endpoints, spec.name))

    def expected(self, rendered: RenderedEnvironment[LocalOptions],
                 live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, Manifest]:
        """As the target holds them: the desired manifests themselves (a Secret's values as digests only), with
        `maxReplicas` clamped to the cap per group (as `observe` reports them)."""
        cap = self.clusters.limits.per_group(rendered.spec)[0]
        return {d.ref: limits.clamp(hide_secret_values(d.manifest), cap) for d in rendered.objects if d.ref in live}

    def apply(self, item: PlanItem, context: ApplyContext[LocalOptions]) -> Outcome:
        environment, ref = context.environment, item.ref
        if item.action == Action.DELETE:
            if ref.kind == "RayService":
                self.endpoints.close((environment, ref.name))
            apply.delete(self.clusters, self.store, environment, ref)
            return Outcome.DELETED
        assert item.desired is not None
        manifest = item.desired.manifest
        if ref.kind == "RayCluster":
            return apply.raycluster(self.clusters, self.store, environment, item, manifest)
        if ref.kind == "RayService":
            return apply.rayservice(self.clusters, self.store, self.endpoints, item, manifest, context)
        if ref.kind == "RayJob":
            return apply.rayjob(self.clusters, self.store, item, manifest, context)
        if ref.kind == "RayCronJob":  # its schedule starts now; runs already made are kept
            old = self.store.load(environment, ref) or {"last_slot": time.time(), "runs": {}}
            self.store.save(environment, ref, {**old, "manifest": manifest, "revision": context.revision})
            return Outcome.CREATED if item.action == Action.CREATE else Outcome.CONFIGURED
        self.store.save(environment, ref, {"manifest": hide_secret_values(manifest)})  # never a value on disk
        return Outcome.CREATED if item.action == Action.CREATE else Outcome.CONFIGURED

    def close(self, workloads: bool) -> None:
        """With `workloads`, stop the Ray processes of every environment this target observed that does not
        ask to `persist`. Without, nothing: the processes belong to the daemon, not to a `plan` or `diff`."""
        if not workloads:
            return
        self.endpoints.close_all()  # they live in this process, whether its clusters persist or not
        with self._lock:
            stopping = [e for e, persist in self._persist.items() if not persist]
        for env in stopping:
            for kind, record in self.store.ray_records(env):
                if kind == "RayCluster":
                    self.clusters.stop(cluster_name(env, record["manifest"]["metadata"]["name"]))
                elif kind == "RayService":
                    for name in serve.clusters_of(record):
                        self.clusters.stop(name)
                elif record.get("ephemeral"):
                    self.clusters.stop(record["cluster"])
                for info in (record.get("runs") or {}).values():  # a RayCronJob's runs on their own clusters
                    if info.get("ephemeral"):
                        self.clusters.stop(info["cluster"])
