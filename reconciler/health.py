"""Observe stage: health of RayCluster, RayJob and RayService from their KubeRay status.

Called by the daemon after each apply, for both targets (the local target reports the same
status shape as KubeRay). Pure functions over status dicts; the table below is the whole policy.
"""
from __future__ import annotations

from typing import Any

from .model import LiveObject

HEALTHY, PROGRESSING, DEGRADED, SUSPENDED, MISSING, UNKNOWN = (
    "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
_SEVERITY = [HEALTHY, UNKNOWN, SUSPENDED, PROGRESSING, MISSING, DEGRADED]

# RayJob: jobDeploymentStatus -> health (jobStatus decides for Complete).
JOB_DEPLOYMENT_HEALTH = {
    "": PROGRESSING, "New": PROGRESSING, "Initializing": PROGRESSING, "Running": PROGRESSING,
    "Retrying": PROGRESSING, "Waiting": PROGRESSING, "Suspending": SUSPENDED, "Suspended": SUSPENDED,
    "Complete": HEALTHY, "Failed": DEGRADED, "ValidationFailed": DEGRADED,
}


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def raycluster(status: dict[str, Any], generation: int | None = None) -> tuple[str, str]:
    """(health, message) of a RayCluster; `generation` is the object's metadata.generation."""
    if not status:
        return PROGRESSING, "no status yet"
    observed = status.get("observedGeneration")
    if generation and observed and observed < generation:
        return PROGRESSING, f"operator has not yet observed generation {generation} (status is for {observed})"
    if status.get("state") == "suspended" or (_condition(status, "RayClusterSuspended") or {}).get("status") == "True":
        return SUSPENDED, "suspended"
    failure = _condition(status, "ReplicaFailure")
    if failure and failure.get("status") == "True":
        return DEGRADED, f"ReplicaFailure: {failure.get('reason', '')}".strip()
    if status.get("state") == "failed":
        return DEGRADED, str(status.get("reason") or "failed")
    head = _condition(status, "HeadPodReady")
    if head is not None and head.get("status") != "True":
        return PROGRESSING, "head not ready"
    ready, desired = status.get("readyWorkerReplicas", 0), status.get("desiredWorkerReplicas", 0)
    if ready < desired:
        return PROGRESSING, f"{ready}/{desired} workers ready"
    if status.get("state") == "ready" or (_condition(status, "RayClusterProvisioned") or {}).get("status") == "True":
        return HEALTHY, f"{ready}/{desired} workers ready"
    return PROGRESSING, "provisioning"


def rayjob(status: dict[str, Any]) -> tuple[str, str]:
    """(health, message) of a RayJob run."""
    deployment, job = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    health = JOB_DEPLOYMENT_HEALTH.get(deployment, UNKNOWN)
    if deployment == "Complete" and job not in ("SUCCEEDED", ""):
        health = DEGRADED
    return health, f"{deployment or 'New'}/{job or 'PENDING'}"


def rayservice(status: dict[str, Any]) -> tuple[str, str]:
    """(health, message) of a RayService."""
    if (_condition(status, "UpgradeInProgress") or {}).get("status") == "True":
        return PROGRESSING, "upgrade in progress"
    ready = _condition(status, "Ready")
    if ready is None:
        return PROGRESSING, "no Ready condition yet"
    if ready.get("status") == "True":
        return HEALTHY, "ready"
    reason = str(ready.get("reason", "not ready"))
    return (PROGRESSING if reason == "Initializing" else DEGRADED), reason


def of(obj: LiveObject | None) -> tuple[str, str]:
    """Health of any live object; `Missing` when it is not there."""
    if obj is None:
        return MISSING, "not found"
    if obj.ref.kind == "RayCluster":
        return raycluster(obj.status, obj.manifest.get("metadata", {}).get("generation"))
    check = {"RayJob": rayjob, "RayService": rayservice}.get(obj.ref.kind)
    return check(obj.status) if check else (HEALTHY, "exists")


def worst(healths: list[str]) -> str:
    """The environment's health: its least healthy object (Healthy when empty)."""
    return max(healths, key=_SEVERITY.index, default=HEALTHY)
