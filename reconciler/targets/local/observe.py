"""Live state on the local target, in KubeRay's status shape, read from Ray itself: the nodes alive
per group (Ray's state API), each run's status (the Ray Jobs API) and a RayService's applications (Serve's
REST API). Reads only: what the operator does on its own (cron slots, clean-ups after runs, switching a
RayService to its new cluster) is `control`'s."""
from __future__ import annotations

import copy

from ...kuberay import worker_groups
from ...model import TERMINAL_JOB_STATUSES, LiveObject, ObjectRef, desired_workers
from . import limits, serve
from .clusters import HEAD, Clusters
from .store import Record

JOB_DEPLOYMENT_STATUS = {"SUCCEEDED": "Complete", "STOPPED": "Complete", "FAILED": "Failed"}  # else Running


def cluster_name(environment: str, name: str) -> str:
    """The local Ray cluster of RayCluster `name` (each environment has its own). `_` appears in no environment
    name (a DNS label) and no object name, so no two (environment, name) pairs share a cluster."""
    return f"{environment}_{name}"


def legacy_cluster_name(environment: str, name: str) -> str:
    """The name an earlier version gave the cluster (ambiguous: `team` + `a-x` and `team-a` + `x` both made
    `team-a-x`); such a cluster is stopped and started again under `cluster_name`."""
    return f"{environment}-{name}"


def raycluster(clusters: Clusters, environment: str, ref: ObjectRef, record: Record, cap: int) -> LiveObject | None:
    """A RayCluster as applied, with the replicas that really run (drift shows), `maxReplicas` clamped to `cap`
    workers per group (the effective bound) and KubeRay's status fields; absent when its Ray cluster is not
    running."""
    cluster = clusters.get(cluster_name(environment, ref.name))
    if cluster is None:
        return None
    manifest = copy.deepcopy(limits.clamp(record["manifest"], cap))
    alive = cluster.dashboard.alive_nodes()
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
    info = cluster.dashboard.job_info(run) if cluster else None
    if info is None:
        return None
    job = str(info.get("status"))
    return {"jobId": run, "jobStatus": job, "message": info.get("message") or "",
            "jobDeploymentStatus": JOB_DEPLOYMENT_STATUS.get(job, "Running"),
            "startTime": (info.get("start_time") or 0) / 1000 or None,
            "endTime": (info.get("end_time") or 0) / 1000 or None}


def rayjob(clusters: Clusters, ref: ObjectRef, record: Record) -> LiveObject | None:
    """A RayJob with its run's status: the final one kept in the store, else the Jobs API's (reads only). A run its
    cluster no longer knows (the cluster was stopped or replaced before the run ended) is absent, so it is
    submitted again."""
    status = record.get("status") or {}
    if status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
        status = job_status(clusters, record["submission_id"], record["cluster"])
        if status is None:
            return None
    return LiveObject(ref, record["manifest"], status)


def rayservice(clusters: Clusters, ref: ObjectRef, record: Record, cap: int) -> LiveObject | None:
    """A RayService as the local target holds it, with KubeRay's status: `activeServiceStatus` and, during an upgrade,
    `pendingServiceStatus` (each cluster's Serve applications and their deployments), `numServeEndpoints`, the
    conditions `Ready` and `UpgradeInProgress`, and `serveURL` (its address on 127.0.0.1). Its spec is what runs:
    the cluster spec and `serveConfigV2` of the cluster that takes the traffic next (the pending one once it runs,
    else the active one), so a start or a deploy that failed shows as a change still to make. Absent when its
    active cluster is not running."""
    active, pending = record.get("active"), record.get("pending")
    cluster = clusters.get(active["cluster"]) if active else None
    if not active or cluster is None:
        return None
    upcoming = clusters.get(pending["cluster"]) if pending else None
    goal = pending if pending and upcoming is not None else active
    manifest = copy.deepcopy(record["manifest"])
    manifest["spec"]["rayClusterConfig"] = copy.deepcopy(goal["spec"])
    if goal["config"] or "serveConfigV2" in manifest["spec"]:
        manifest["spec"]["serveConfigV2"] = goal["config"]
    current = serve.service_status(cluster)
    endpoints = current.pop("numServeEndpoints")
    applications = current["applicationStatuses"].values()
    starting = not applications or any(a.get("status") in ("NOT_STARTED", "DEPLOYING") for a in applications)
    ready = ({"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"} if endpoints else
             {"type": "Ready", "status": "False", "reason": "Initializing" if starting else "ZeroServeEndpoints"})
    status: dict = {"numServeEndpoints": endpoints, "activeServiceStatus": current, "conditions": [
        ready, {"type": "UpgradeInProgress", "status": str(pending is not None),
                "reason": "BothActivePendingClustersExist" if pending else "NoPendingCluster"}]}
    if record.get("port"):
        status["serveURL"] = f"http://127.0.0.1:{record['port']}"
    if pending is not None:
        status["pendingServiceStatus"] = {"rayClusterName": pending["cluster"], "applicationStatuses": {}}
        if upcoming is not None:
            status["pendingServiceStatus"] = {k: v for k, v in serve.service_status(upcoming).items()
                                              if k != "numServeEndpoints"}
    return LiveObject(ref, limits.clamp(manifest, cap), status)
