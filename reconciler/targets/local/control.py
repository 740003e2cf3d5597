"""The local target's own controller: what KubeRay's operator does in its loop, done for the objects
applied to the local target (the store). A finished run's status is kept; what KubeRay does after a
run is done after each TTL (`deletionRules`, `onSuccess`/`onFailure`, `shutdownAfterJobFinishes`);
RayCronJob slots are run (`cron.control`); a RayService's address is kept open, its traffic switched to a
new cluster once all its applications run there, and its old clusters stopped after their deletion delay.

Driven by the pipeline's reconcile of the environment, right before it observes (`LocalTarget.control`);
never by a preview (`plan`, `diff`, the status page), so a look never acts. Runs in the thread that
reconciles the environment.
"""
from __future__ import annotations

import copy
import logging
import time

from ...model import TERMINAL_JOB_STATUSES, ObjectRef
from ...pipeline.target import RunReport
from . import cron, serve
from .clusters import Clusters
from .endpoints import Endpoints
from .nodes import LocalRayError
from .observe import cluster_name, job_status, legacy_cluster_name
from .runtime import LocalRayCluster
from .store import ObjectStore, Record

log = logging.getLogger(__name__)
DELETION_DELAY = 60  # seconds an old RayService cluster keeps running after the switch (KubeRay's default)


def control(clusters: Clusters, store: ObjectStore, endpoints: Endpoints, environment: str,
            now: float | None = None) -> list[RunReport]:
    """One step over the environment's RayJobs, RayCronJobs and RayServices; the reports of RayCronJob slots
    missed."""
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
        elif kind == "RayService":
            rayservice(clusters, store, endpoints, environment, ref, record, now)
    return reports


def rayservice(clusters: Clusters, store: ObjectStore, endpoints: Endpoints, environment: str, ref: ObjectRef,
               record: Record, now: float) -> None:
    """KubeRay's RayService loop: once every application runs on the pending cluster, it becomes the active one
    (the address routes new connections to it) and the old one stops `rayClusterDeletionDelaySeconds` later
    (default 60), so requests under way finish; the address is opened again after a restart of the daemon."""
    before = copy.deepcopy(record)
    active, pending = record.get("active"), record.get("pending")
    upcoming = clusters.get(pending["cluster"]) if pending else None
    if pending and upcoming is not None and _serving(upcoming):
        delay = record["manifest"]["spec"].get("rayClusterDeletionDelaySeconds", DELETION_DELAY)
        record["retiring"] = [*(record.get("retiring") or []), *([{"cluster": active["cluster"], "at": now + delay}]
                                                                  if active else [])]
        record["active"], active = pending, pending
        record.pop("pending")
        log.info("environment %s: %s: its applications run on Ray cluster %s: traffic switched to it", environment,
                 ref, pending["cluster"])
    if active and clusters.get(active["cluster"]) is not None:
        endpoint = endpoints.open((environment, ref.name), record.get("port"))
        endpoint.route(active["port"])
        record["port"] = endpoint.port
    for old in [r for r in record.get("retiring") or [] if r["at"] <= now]:
        clusters.stop(old["cluster"])
        record["retiring"].remove(old)
    if record != before:
        store.save(environment, ref, record)


def _serving(cluster: LocalRayCluster) -> bool:
    """Every Serve application runs on the cluster; a cluster whose dashboard does not answer yet is not ready."""
    try:
        return serve.ready(serve.service_status(cluster))
    except LocalRayError as exc:
        log.debug("Ray cluster %s: not ready to take the traffic: %s", cluster.name, exc)
        return False


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
