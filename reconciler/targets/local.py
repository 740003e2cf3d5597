"""The embedded local target: RayCluster and RayJob objects run on real local Ray processes.

The reconcile stage calls it like any target. It plays both the API server (it stores what was
applied, under the state dir) and the operator (it turns specs into `ray start` processes via
`local_ray`, and submits jobs through the Ray Jobs API). Live state comes from Ray itself.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from ..diff import cluster_spec, strip
from ..errors import PermanentError, TemporaryError
from ..model import (Action, EnvironmentSpec, LedgerSnapshot, LiveObject, Manifest, ObjectRef, Outcome, PlanItem, RenderedEnvironment,
                     job_submission_id, parse_quantity)
from .base import ApplyContext
from .local_ray import LocalRayCluster, NodeSpec

log = logging.getLogger(__name__)
HEAD = "head"
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
_HASH_EXCLUDED = ["/workerGroupSpecs/*/replicas", "/workerGroupSpecs/*/minReplicas", "/workerGroupSpecs/*/maxReplicas",
                  "/workerGroupSpecs/*/scaleStrategy", "/upgradeStrategy"]


def desired_workers(group: dict[str, Any]) -> int:
    """clamp(replicas, minReplicas, maxReplicas) x numOfHosts, as KubeRay computes it."""
    low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
    return min(max(group.get("replicas", 0), low), high) * group.get("numOfHosts", 1)


def node_spec(group_name: str, group: dict[str, Any]) -> NodeSpec:
    """Ray resources of a node from `rayStartParams`, else from the first container's limits (as KubeRay)."""
    params = group.get("rayStartParams") or {}
    container = ((group.get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    resources = container.get("resources") or {}
    limits = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}

    def pick(param: str, limit: str, integer: bool) -> float | None:
        if param in params:
            return float(params[param])
        if limit in limits:
            value = parse_quantity(limits[limit])
            return float(math.ceil(value)) if integer else value
        return None

    memory = pick("memory", "memory", False)
    store = params.get("object-store-memory")
    custom = params.get("resources")
    return NodeSpec(group=group_name, num_cpus=pick("num-cpus", "cpu", True),
                    num_gpus=pick("num-gpus", "nvidia.com/gpu", True),
                    memory=int(memory) if memory else None, object_store_memory=int(store) if store else None,
                    resources=json.loads(custom.strip("'\"").replace('\\"', '"')) if custom else {})


def template_hash(spec: dict[str, Any]) -> str:
    """What `upgradeStrategy: Recreate` compares: the spec without replica counts (as KubeRay)."""
    return json.dumps(strip(spec, _HASH_EXCLUDED), sort_keys=True)


class LocalTarget:
    """Local Ray clusters and jobs for every environment whose target is `local`."""

    kind = "local"
    vanished_runs_are_final = False  # a run its (restarted) cluster no longer knows is submitted again

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "local"
        self.clusters_dir = self.dir / "clusters"
        self._clusters: dict[str, LocalRayCluster] = {}
        self._persist: dict[str, bool] = {}
        self._lock = threading.Lock()

    # -- stored objects (what was applied) ---------------------------------------------------------
    def _record_path(self, env: str, ref: ObjectRef) -> Path:
        return self.dir / "objects" / env / f"{ref.kind}.{ref.namespace}.{ref.name}.json"

    def _load(self, env: str, ref: ObjectRef) -> dict[str, Any] | None:
        path = self._record_path(env, ref)
        return json.loads(path.read_text()) if path.exists() else None

    def _save(self, env: str, ref: ObjectRef, record: dict[str, Any]) -> None:
        path = self._record_path(env, ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)

    def _forget(self, env: str, ref: ObjectRef) -> None:
        self._record_path(env, ref).unlink(missing_ok=True)

    # -- clusters ------------------------------------------------------------------------------------
    def _cluster(self, name: str) -> LocalRayCluster | None:
        with self._lock:
            cluster = self._clusters.get(name)
            if cluster is None:
                cluster = LocalRayCluster.adopt(name, self.clusters_dir)
                if cluster is not None:
                    self._clusters[name] = cluster
            return cluster

    def _start(self, name: str, spec: dict[str, Any]) -> LocalRayCluster:
        self._stop(name)
        head = node_spec(HEAD, spec.get("headGroupSpec") or {})
        log.info("local: starting Ray cluster %s", name)
        cluster = LocalRayCluster.start(name, head, self.clusters_dir)
        with self._lock:
            self._clusters[name] = cluster
        self._scale(cluster, spec)
        return cluster

    def _stop(self, name: str) -> None:
        cluster = self._cluster(name)
        if cluster is not None:
            log.info("local: stopping Ray cluster %s", name)
            cluster.stop()
        with self._lock:
            self._clusters.pop(name, None)

    def _scale(self, cluster: LocalRayCluster, spec: dict[str, Any]) -> None:
        """Start or stop worker raylets until each group runs its desired count."""
        groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs") or []}
        running = cluster.worker_pids()
        for name in set(running) - set(groups):
            while cluster.remove_worker(name):
                pass
        for name, group in groups.items():
            want, have = desired_workers(group), len(running.get(name, []))
            for _ in range(want - have):
                cluster.add_worker(node_spec(name, group))
            for _ in range(have - want):
                cluster.remove_worker(name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = cluster.alive_nodes()
            if all(alive.get(n, 0) == desired_workers(g) for n, g in groups.items()):
                return
            time.sleep(0.5)
        raise TemporaryError(f"RayCluster {cluster.name}: workers did not reach the desired counts in 60s")

    def _cluster_name(self, env: str, name: str) -> str:
        return f"{env}-{name}"

    # -- Target protocol -----------------------------------------------------------------------------
    def observe(self, env: RenderedEnvironment, refs: set[ObjectRef]) -> dict[ObjectRef, LiveObject]:
        self._persist[env.spec.name] = bool(env.spec.target.options.get("persist", False))
        live = {}
        for ref in refs:
            record = self._load(env.spec.name, ref)
            if record is None:
                continue
            if ref.kind == "RayCluster":
                obj = self._observe_cluster(env.spec.name, ref, record)
            elif ref.kind == "RayJob":
                obj = self._observe_job(env.spec.name, ref, record)
            else:
                obj = LiveObject(ref, record["manifest"])
            if obj is not None:
                live[ref] = obj
        return live

    def _observe_cluster(self, env: str, ref: ObjectRef, record: dict[str, Any]) -> LiveObject | None:
        cluster = self._cluster(self._cluster_name(env, ref.name))
        if cluster is None:
            return None
        manifest = json.loads(json.dumps(record["manifest"]))
        alive = cluster.alive_nodes()
        desired = ready = low = high = 0
        for group in manifest["spec"].get("workerGroupSpecs") or []:
            want, have = desired_workers(group), alive.get(group["groupName"], 0)
            if have != want:
                group["replicas"] = have  # drift: show what really runs
            desired, ready = desired + want, ready + min(have, want)
            low, high = low + group.get("minReplicas", 0), high + group.get("maxReplicas", 0)
        head_ready = alive.get(HEAD, 0) > 0
        status = {"state": "ready" if head_ready and ready >= desired else "provisioning",
                  "desiredWorkerReplicas": desired, "readyWorkerReplicas": ready, "availableWorkerReplicas": ready,
                  "minWorkerReplicas": low, "maxWorkerReplicas": high, "dashboardURL": cluster.dashboard_url,
                  "conditions": [{"type": "HeadPodReady", "status": str(head_ready)}]}
        return LiveObject(ref, manifest, status, {k: v for k, v in alive.items() if k != HEAD})

    def _observe_job(self, env: str, ref: ObjectRef, record: dict[str, Any]) -> LiveObject | None:
        """The run's status from the Ray Jobs API. A run its cluster no longer knows (the cluster was
        stopped or replaced before the run ended) is reported absent, so it is submitted again."""
        run, status = record["submission_id"], dict(record.get("status") or {})
        if status.get("jobStatus") not in _TERMINAL:
            cluster = self._cluster(record["cluster"])
            info = cluster.job_info(run) if cluster else None
            if info is None:
                return None
            job = str(info.get("status"))
            status = {"jobId": run, "jobStatus": job, "message": info.get("message") or "",
                      "jobDeploymentStatus": {"SUCCEEDED": "Complete", "STOPPED": "Complete",
                                              "FAILED": "Failed"}.get(job, "Running"),
                      "startTime": (info.get("start_time") or 0) / 1000 or None,
                      "endTime": (info.get("end_time") or 0) / 1000 or None}
            if job in _TERMINAL:
                self._save(env, ref, {**record, "status": status})
                if record.get("ephemeral") and record["manifest"]["spec"].get("shutdownAfterJobFinishes"):
                    self._stop(record["cluster"])
        return LiveObject(ref, record["manifest"], status)

    def expected(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, Manifest]:
        """Stored as applied: the desired manifests themselves."""
        return {d.ref: d.manifest for d in env.objects if d.ref in live}

    def apply(self, item: PlanItem, context: ApplyContext) -> Outcome:
        env, ref = context.environment, item.ref
        if item.action == Action.DELETE:
            self._delete(env, ref)
            return Outcome.DELETED
        assert item.desired is not None
        manifest = item.desired.manifest
        if ref.kind == "RayCluster":
            return self._apply_cluster(env, item, manifest)
        if ref.kind == "RayJob":
            return self._apply_job(env, item, manifest, context)
        self._save(env, ref, {"manifest": manifest})
        return Outcome.CREATED if item.action == Action.CREATE else Outcome.CONFIGURED

    def _apply_cluster(self, env: str, item: PlanItem, manifest: dict[str, Any]) -> Outcome:
        name, spec = self._cluster_name(env, item.ref.name), manifest["spec"]
        old = self._load(env, item.ref)
        self._save(env, item.ref, {"manifest": manifest})
        if item.action in (Action.CREATE, Action.RECREATE):
            self._start(name, spec)
            return Outcome.CREATED if item.action == Action.CREATE else Outcome.RECREATED
        cluster = self._cluster(name)
        if cluster is None:
            raise TemporaryError(f"{item.ref}: Ray cluster {name} is not running")
        recreate = (spec.get("upgradeStrategy") or {}).get("type") == "Recreate"
        if old and recreate and template_hash(old["manifest"]["spec"]) != template_hash(spec):
            self._start(name, spec)
            return Outcome.RECREATED
        self._scale(cluster, spec)
        return Outcome.CONFIGURED

    def _apply_job(self, env: str, item: PlanItem, manifest: dict[str, Any], context: ApplyContext) -> Outcome:
        old = self._load(env, item.ref)
        if item.action == Action.UPDATE and old:
            self._save(env, item.ref, {**old, "manifest": manifest})
            return Outcome.CONFIGURED
        if item.action == Action.RECREATE and old:
            self._delete(env, item.ref)
        spec, run = manifest["spec"], job_submission_id(env, item.ref.name, manifest)
        if "clusterSelector" in spec:
            cluster_name, ephemeral = self._cluster_name(env, spec["clusterSelector"]["ray.io/cluster"]), False
            cluster = self._cluster(cluster_name)
            if cluster is None:
                raise TemporaryError(f"{item.ref}: RayCluster {spec['clusterSelector']['ray.io/cluster']} "
                                     "selected by clusterSelector is not running")
        else:
            cluster_name, ephemeral = run, True  # deterministic: a retry after a crash adopts it
            cluster = self._cluster(cluster_name) or self._start(cluster_name, spec["rayClusterSpec"])
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        working_dir = runtime_env.get("working_dir")
        if isinstance(working_dir, str) and "://" not in working_dir:
            runtime_env["working_dir"] = str(context.materialize(working_dir))
        resources = spec.get("entrypointResources")
        try:
            cluster.submit_job(run, spec["entrypoint"], runtime_env=runtime_env or None,
                               metadata={"ray-gitops/environment": env, "ray-gitops/revision": context.revision,
                                         **(spec.get("metadata") or {})},
                               entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                               entrypoint_num_gpus=spec.get("entrypointNumGpus"),
                               entrypoint_resources=json.loads(resources) if resources else None)
        except (RuntimeError, OSError) as exc:
            raise PermanentError(f"{item.ref}: submission {run} failed: {exc}") from exc
        self._save(env, item.ref, {"manifest": manifest, "submission_id": run, "cluster": cluster_name,
                                   "ephemeral": ephemeral})
        return Outcome.SUBMITTED

    def _delete(self, env: str, ref: ObjectRef) -> None:
        record = self._load(env, ref)
        if ref.kind == "RayCluster":
            self._stop(self._cluster_name(env, ref.name))
        elif ref.kind == "RayJob" and record:
            cluster = self._cluster(record["cluster"])
            if cluster is not None and (record.get("status") or {}).get("jobStatus") not in _TERMINAL:
                cluster.stop_job(record["submission_id"])
            if record.get("ephemeral"):
                self._stop(record["cluster"])
        self._forget(env, ref)

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext) -> None:
        pass  # the log line is the record on this target

    def load_ledger(self, env: EnvironmentSpec) -> None:
        return None  # the SQLite ledger under the state dir is the only copy

    def save_ledger(self, env: EnvironmentSpec, snapshot: LedgerSnapshot) -> None:
        pass

    def close(self, environment: str | None = None) -> None:
        """Stop the Ray processes of every environment that does not ask to `persist`."""
        for env in [environment] if environment else list(self._persist):
            if self._persist.get(env):
                continue
            for path in sorted((self.dir / "objects" / env).glob("Ray*.json")):
                record = json.loads(path.read_text())
                kind, name = path.name.split(".")[0], record["manifest"]["metadata"]["name"]
                if kind == "RayCluster":
                    self._stop(self._cluster_name(env, name))
                elif record.get("ephemeral"):
                    self._stop(record["cluster"])
