"""Live state on the local target, in KubeRay's status shape, read from Ray itself: the nodes alive
per group (Ray's state API) and each run's status (the Ray Jobs API)."""
from __future__ import annotations

import copy
import time

from ...model import TERMINAL_JOB_STATUSES, LiveObject, ObjectRef, desired_workers
from ...pipeline.diff import worker_groups
from .clusters import HEAD, Clusters
from .store import ObjectStore, Record

JOB_DEPLOYMENT_STATUS = {"SUCCEEDED": "Complete", "STOPPED": "Complete", "FAILED": "Failed"}  # else Running


def cluster_name(environment: str, name: str) -> str:
    """The local Ray cluster of RayCluster `name` (each environment has its own)."""
    return f"{environment}-{name}"


def raycluster(clusters: Clusters, environment: str, ref: ObjectRef, record: Record) -> LiveObject | None:
    """A RayCluster as applied, with the replicas that really run (drift shows) and KubeRay's status fields;
    absent when its Ray cluster is not running."""
    cluster = clusters.get(cluster_name(environment, ref.name))
    if cluster is None:
        return None
    manifest = copy.deepcopy(record["manifest"])
    alive = cluster.alive_nodes()
    desired = ready = low = high = 0
    for name, group in worker_groups(manifest).items():
        want, have = desired_workers(group), alive.get(name, 0)
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


def job_status(clusters: Clusters, run: str, cluster_name: str) -> dict | None:
    """A run's status as KubeRay writes it on a RayJob, from the Jobs API of its cluster (None: unknown there)."""
    cluster = clusters.get(cluster_name)
    info = cluster.job_info(run) if cluster else None
    if info is None:
        return None
    job = str(info.get("status"))
    return {"jobId": run, "jobStatus": job, "message": info.get("message") or "",
            "jobDeploymentStatus": JOB_DEPLOYMENT_STATUS.get(job, "Running"),
            "startTime": (info.get("start_time") or 0) / 1000 or None,
            "endTime": (info.get("end_time") or 0) / 1000 or None}


def rayjob(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef, record: Record,
           now: float | None = None) -> LiveObject | None:
    """A RayJob with its run's status from the Jobs API (kept in the store once it ended). A run its cluster
    no longer knows (the cluster was stopped or replaced before the run ended) is absent, so it is
    submitted again. After the run, its own cluster is cleaned up as KubeRay would (`cleanups`)."""
    run, status = record["submission_id"], dict(record.get("status") or {})
    now = time.time() if now is None else now
    if status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
        status = job_status(clusters, run, record["cluster"])
        if status is None:
            return None
        if status["jobStatus"] in TERMINAL_JOB_STATUSES:
            record = {**record, "status": status, "cleanups": cleanups(record["manifest"]["spec"], status, now)}
            store.save(environment, ref, record)
    due = [c for c in record.get("cleanups") or [] if c[0] <= now]
    if due and record.get("ephemeral"):
        for _, policy in due:
            if policy == "DeleteWorkers" and clusters.get(record["cluster"]) is not None:
                clusters.scale(clusters.get(record["cluster"]), {"workerGroupSpecs": []})
            elif policy in ("DeleteCluster", "DeleteSelf"):
                clusters.stop(record["cluster"])
    if due:
        record = {**record, "cleanups": [c for c in record["cleanups"] if c[0] > now]}
        if any(policy == "DeleteSelf" for _, policy in due):  # the RayJob goes: its run stays final in the ledger
            store.forget(environment, ref)
            return None
        store.save(environment, ref, record)
    return LiveObject(ref, record["manifest"], status)


def cleanups(spec: dict, status: dict, now: float) -> list[tuple[float, str]]:
    """What KubeRay does after a run ends, as (when, policy): `deletionStrategy.deletionRules` whose condition
    matches (each after its `ttlSeconds`), or the legacy `onSuccess`/`onFailure`, or
    `shutdownAfterJobFinishes` (after `ttlSecondsAfterFinished`): DeleteCluster, DeleteWorkers, DeleteSelf."""
    job, failed = status.get("jobStatus"), status.get("jobDeploymentStatus") == "Failed"
    strategy = spec.get("deletionStrategy") or {}
    if strategy.get("deletionRules"):
        return [(now + (rule["condition"].get("ttlSeconds") or 0), rule["policy"])
                for rule in strategy["deletionRules"]
                if rule["condition"].get("jobStatus") == job or (failed and "jobDeploymentStatus" in rule["condition"])]
    legacy = strategy.get("onSuccess" if job == "SUCCEEDED" else "onFailure")
    if legacy and legacy.get("policy"):
        return [(now + (spec.get("ttlSecondsAfterFinished") or 0), legacy["policy"])]
    if spec.get("shutdownAfterJobFinishes"):
        return [(now + (spec.get("ttlSecondsAfterFinished") or 0), "DeleteCluster")]
    return []
