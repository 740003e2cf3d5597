"""Observe stage: health of RayCluster, RayJob and RayService from their KubeRay status.

Called by the daemon after each apply, for both targets (the local target reports the same
status shape as KubeRay). Pure functions over status dicts; the table below is the whole policy.
"""
from __future__ import annotations

from typing import Any

from ..model import Health, LiveObject


# RayJob: jobDeploymentStatus -> health (jobStatus decides for Complete).
JOB_DEPLOYMENT_HEALTH = {
    **dict.fromkeys(("", "New", "Initializing", "Running", "Retrying", "Waiting"), Health.PROGRESSING),
    "Suspending": Health.SUSPENDED, "Suspended": Health.SUSPENDED,
    "Complete": Health.HEALTHY, "Failed": Health.DEGRADED, "ValidationFailed": Health.DEGRADED,
}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def raycluster(status: dict[str, Any], generation: int | None = None) -> tuple[Health, str]:
    """(health, message) of a RayCluster; `generation` is the object's metadata.generation."""
    if not status:
        return Health.PROGRESSING, "no status yet"
    observed = status.get("observedGeneration")
    if generation and observed and observed < generation:
        return Health.PROGRESSING, f"operator has not yet observed generation {generation} (status is for {observed})"
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


def rayservice(status: dict[str, Any]) -> tuple[Health, str]:
    """(health, message) of a RayService."""
    if (_condition(status, "UpgradeInProgress") or {}).get("status") == "True":
        return Health.PROGRESSING, "upgrade in progress"
    ready = _condition(status, "Ready")
    if ready is None:
        return Health.PROGRESSING, "no Ready condition yet"
    if ready.get("status") == "True":
        return Health.HEALTHY, "ready"
    reason = str(ready.get("reason", "not ready"))
    return (Health.PROGRESSING if reason == "Initializing" else Health.DEGRADED), reason


def of(obj: LiveObject | None) -> tuple[Health, str]:
    """Health of any live object; `Missing` when it is not there."""
    if obj is None:
        return Health.MISSING, "not found"
    if obj.ref.kind == "RayCluster":
        return raycluster(obj.status, obj.manifest.get("metadata", {}).get("generation"))
    if obj.ref.kind == "RayCronJob":
        suspended = (obj.manifest.get("spec") or {}).get("suspend") is True
        return (Health.SUSPENDED, "suspended") if suspended else (Health.HEALTHY, "scheduling")
    check = {"RayJob": rayjob, "RayService": rayservice}.get(obj.ref.kind)
    return check(obj.status) if check else (Health.HEALTHY, "exists")
