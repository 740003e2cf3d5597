"""The local target's own controller: what KubeRay's operator does in its loop, done for the objects
applied to the local target (the store). A finished run's status is kept; what KubeRay does after a
run is done after each TTL (`deletionRules`, `onSuccess`/`onFailure`, `shutdownAfterJobFinishes`);
RayCronJob slots are run (`cron.control`).

Driven by the pipeline's reconcile of the environment, right before it observes (`LocalTarget.control`);
never by a preview (`plan`, `diff`, the status page), so a look never acts. Runs in the thread that
reconciles the environment.
"""
from __future__ import annotations

import logging
import time

from ...model import TERMINAL_JOB_STATUSES, ObjectRef
from ...pipeline.target import RunReport
from . import cron
from .clusters import Clusters
from .observe import cluster_name, job_status, legacy_cluster_name
from .store import ObjectStore, Record

log = logging.getLogger(__name__)


def control(clusters: Clusters, store: ObjectStore, environment: str, now: float | None = None) -> list[RunReport]:
    """One step over the environment's RayJobs and RayCronJobs; the reports of RayCronJob slots missed."""
    now = time.time() if now is None else now
    reports: list[RunReport] = []
    for kind, record in store.ray_records(environment):
        ref = ObjectRef.of(record["manifest"], "default")
        legacy = legacy_cluster_name(environment, ref.name)
        if kind == "RayCluster" and (clusters.directory / legacy / "cluster.json").exists():
            log.warning("environment %s: stopping Ray cluster %s, started by an earlier version under a name other "
                        "environments could share; it starts again as %s", environment, legacy,
                        cluster_name(environment, ref.name))
            clusters.stop(legacy)
        if kind == "RayJob":
            rayjob(clusters, store, environment, ref, record, now)
        elif kind == "RayCronJob":
            reports += cron.control(clusters, store, environment, ref, record, now)
    return reports


def rayjob(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef, record: Record,
           now: float) -> None:
    """Keep the run's final status once it ended (with what KubeRay does after it: `cleanups`), then do what is
    due. `DeleteSelf` removes the RayJob; its run's final status stays in the store (`bury`), so it is still
    seen ended and never submitted again."""
    run, status = record["submission_id"], dict(record.get("status") or {})
    if status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
        status = job_status(clusters, run, record["cluster"]) or {}
        if status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
            return
        record = {**record, "status": status, "cleanups": cleanups(record["manifest"]["spec"], status, now)}
        store.save(environment, ref, record)
    due = [c for c in record.get("cleanups") or [] if c[0] <= now]
    if not due:
        return
    if record.get("ephemeral"):
        for _, policy in due:
            cluster = clusters.get(record["cluster"])
            if policy == "DeleteWorkers" and cluster is not None:
                clusters.scale(cluster, {"workerGroupSpecs": []})
            elif policy in ("DeleteCluster", "DeleteSelf"):
                clusters.stop(record["cluster"])
    if any(policy == "DeleteSelf" for _, policy in due):
        store.bury(environment, run, ref.name, status)
        store.forget(environment, ref)
        return
    store.save(environment, ref, {**record, "cleanups": [c for c in record["cleanups"] if c[0] > now]})


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
