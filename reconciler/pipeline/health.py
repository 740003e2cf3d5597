"""Observe stage: health of RayCluster, RayJob and RayService from their KubeRay status.

Called by the daemon after each apply, for both targets (the local target reports the same
status shape as KubeRay). Pure functions over status dicts; the table below is the whole policy.
"""
from __future__ import annotations

import time
from typing import Any

from ..model import Health, LiveObject, desired_workers, parse_time

# RayJob: jobDeploymentStatus -> health (jobStatus decides for Complete).
JOB_DEPLOYMENT_HEALTH = {
    **dict.fromkeys(("", "New", "Initializing", "Running", "Retrying", "Waiting"), Health.PROGRESSING),
    "Suspending": Health.SUSPENDED, "Suspended": Health.SUSPENDED,
    "Complete": Health.HEALTHY, "Failed": Health.DEGRADED, "ValidationFailed": Health.DEGRADED,
}


# With upgradeStrategy Recreate, a spec change makes the operator replace every Pod: a status older than the spec
# is believed stale for this long after the spec was written (the operator acts within a second or so).
RECREATE_GRACE_SECONDS = 30.0


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _desired_workers(spec: dict[str, Any]) -> int:
    """Worker Pods the spec asks for, as KubeRay counts `desiredWorkerReplicas` (a suspended group: none)."""
    return sum(0 if group.get("suspend") else desired_workers(group) for group in spec.get("workerGroupSpecs") or [])


def _stale(status: dict[str, Any], generation: int | None, spec: dict[str, Any] | None,
           spec_written_at: float | None, now: float) -> str:
    """Why `status` does not describe generation `generation` yet ("" when it does, as far as health goes).

    KubeRay writes a RayCluster's status only when a field that health reads changes (state, replica counts,
    endpoints, head, conditions), never for `observedGeneration` alone. After a change that alters none of
    them (a pod template change without Recreate: a pending restart) `observedGeneration` stays behind for
    good. So a lagging status is stale only when it contradicts the spec (desired workers, suspend), or with
    `upgradeStrategy: Recreate` for RECREATE_GRACE_SECONDS after the spec was written."""
    observed = status.get("observedGeneration")
    if not (generation and observed and observed < generation):
        return ""
    stale = f"operator has not yet observed generation {generation} (status is for {observed})"
    if not spec:
        return stale
    if _desired_workers(spec) != status.get("desiredWorkerReplicas", 0):
        return stale
    if bool(spec.get("suspend")) != (status.get("state") == "suspended"):
        return stale
    recreate = (spec.get("upgradeStrategy") or {}).get("type") == "Recreate"
    if recreate and spec_written_at is not None and now - spec_written_at < RECREATE_GRACE_SECONDS:
        return stale
    return ""


def raycluster(status: dict[str, Any], generation: int | None = None, spec: dict[str, Any] | None = None,
               spec_written_at: float | None = None, now: float | None = None) -> tuple[Health, str]:
    """(health, message) of a RayCluster; `generation`, `spec`: the object's metadata.generation and spec;
    `spec_written_at`: when its spec or metadata last changed (Unix seconds, from managedFields)."""
    if not status:
        return Health.PROGRESSING, "no status yet"
    stale = _stale(status, generation, spec, spec_written_at, time.time() if now is None else now)
    if stale:
        return Health.PROGRESSING, stale
    if status.get("state") == "suspended" or (_condition(status, "RayClusterSuspended") or {}).get("status") == "True":
        return Health.SUSPENDED, "suspended"
    failure = _condition(status, "ReplicaFailure")
    if failure and failure.get("status") == "True":
        return Health.DEGRADED, f"ReplicaFailure: {failure.get('reason', '')}".strip()
    if status.get("state") == "failed":
        return Health.DEGRADED, str(status.get("reason") or "failed")
    head = _condition(status, "HeadPodReady")
    if head is not None and head.get("status") != "True":
        return Health.PROGRESSING, "head not ready"
    ready, desired = status.get("readyWorkerReplicas", 0), status.get("desiredWorkerReplicas", 0)
    if ready < desired:
        return Health.PROGRESSING, f"{ready}/{desired} workers ready"
    if status.get("state") == "ready" or (_condition(status, "RayClusterProvisioned") or {}).get("status") == "True":
        return Health.HEALTHY, f"{ready}/{desired} workers ready"
    return Health.PROGRESSING, "provisioning"


def rayjob(status: dict[str, Any]) -> tuple[Health, str]:
    """(health, message) of a RayJob run."""
    deployment, job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    health = JOB_DEPLOYMENT_HEALTH.get(deployment, Health.UNKNOWN)
    if deployment == "Complete" and job not in ("SUCCEEDED", ""):
        health = Health.DEGRADED
    return health, f"{deployment or 'New'}/{job or 'PENDING'}"


# Ray Serve's application status -> health, as KubeRay reads it (it switches traffic to a cluster only when
# every application is RUNNING).
SERVE_APPLICATION_HEALTH = {
    "RUNNING": Health.HEALTHY, **dict.fromkeys(("NOT_STARTED", "DEPLOYING", "DELETING"), Health.PROGRESSING),
    "DEPLOY_FAILED": Health.DEGRADED, "UNHEALTHY": Health.DEGRADED,
}


def _applications(service_status: dict[str, Any] | None) -> tuple[Health, str]:
    """The worst of a cluster's Serve applications (`applicationStatuses`), and what it is."""
    worst, why = Health.HEALTHY, ""
    for name, app in sorted(((service_status or {}).get("applicationStatuses") or {}).items()):
        state = str(app.get("status", ""))
        health = SERVE_APPLICATION_HEALTH.get(state, Health.UNKNOWN)
        if Health.worst([worst, health]) != worst:
            unhealthy = [f"deployment {d}: {x.get('status')}" + (f": {x['message']}" if x.get("message") else "")
                         for d, x in sorted((app.get("serveDeploymentStatuses") or {}).items())
                         if x.get("status") != "HEALTHY"]
            detail = app.get("message") or "; ".join(unhealthy)
            worst, why = health, f"application {name}: {state}" + (f": {detail}" if detail else "")
    return worst, why


def rayservice(status: dict[str, Any]) -> tuple[Health, str]:
    """(health, message) of a RayService: an upgrade whose new cluster's applications failed is stuck (Degraded),
    one under way Progressing; then the applications of the active cluster (Serve's statuses); then `Ready`."""
    pending, why = _applications(status.get("pendingServiceStatus"))
    if pending == Health.DEGRADED:
        return Health.DEGRADED, f"upgrade stuck: on the new cluster, {why}"
    if (_condition(status, "UpgradeInProgress") or {}).get("status") == "True":
        return Health.PROGRESSING, "upgrade in progress"
    ready = _condition(status, "Ready")
    if ready is None:
        return Health.PROGRESSING, "no Ready condition yet"
    active, why = _applications(status.get("activeServiceStatus"))
    if active in (Health.DEGRADED, Health.PROGRESSING):
        return active, why
    if ready.get("status") == "True":
        return Health.HEALTHY, "ready"
    reason = str(ready.get("reason", "not ready"))
    return (Health.PROGRESSING if reason == "Initializing" else Health.DEGRADED), reason


def _written_at(metadata: dict[str, Any]) -> float | None:
    """When any manager last changed the object outside its status (the newest managedFields time)."""
    times = [parse_time(entry.get("time")) for entry in metadata.get("managedFields") or []
             if isinstance(entry, dict) and not entry.get("subresource")]
    return max((t for t in times if t is not None), default=None)


def of(obj: LiveObject | None, now: float | None = None) -> tuple[Health, str]:
    """Health of any live object; `Missing` when it is not there."""
    if obj is None:
        return Health.MISSING, "not found"
    if obj.ref.kind == "RayCluster":
        metadata = obj.manifest.get("metadata") or {}
        return raycluster(obj.status, metadata.get("generation"), obj.manifest.get("spec"), _written_at(metadata), now)
    if obj.ref.kind == "RayCronJob":
        suspended = (obj.manifest.get("spec") or {}).get("suspend") is True
        return (Health.SUSPENDED, "suspended") if suspended else (Health.HEALTHY, "scheduling")
    check = {"RayJob": rayjob, "RayService": rayservice}.get(obj.ref.kind)
    return check(obj.status) if check else (Health.HEALTHY, "exists")
