"""Health of RayCluster, RayJob and RayService from KubeRay status, and an environment's worst health."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.model import Health, LiveObject, ObjectRef
from reconciler.pipeline import health

STATUSES = Path(__file__).parent.parent / "testdata" / "unit" / "health"


def status(kind: str, case: str) -> dict[str, Any]:
    return yaml.safe_load((STATUSES / f"{kind}.yaml").read_text())[case]


@pytest.mark.parametrize("case, expected, message", [
    pytest.param("ready", "Healthy", "3/3 workers ready", id="ready"),
    pytest.param("ready-by-conditions-only", "Healthy", "1/1 workers ready", id="ready-by-conditions-only"),
    pytest.param("suspended", "Suspended", "suspended", id="suspended"),
    pytest.param("suspended-by-condition-only", "Suspended", "suspended", id="suspended-by-condition-only"),
    pytest.param("replica-failure", "Degraded", "ReplicaFailure: FailedCreateWorkerPod", id="replica-failure"),
    pytest.param("head-not-ready", "Progressing", "head not ready", id="head-pod-not-ready"),
    pytest.param("partially-ready", "Progressing", "1/3 workers ready", id="partially-ready"),
    pytest.param("provisioning", "Progressing", "provisioning", id="provisioning"),
])
def test_raycluster_health(case: str, expected: str, message: str) -> None:
    assert health.raycluster(status("raycluster", case)) == (expected, message)


def test_raycluster_without_status_is_progressing() -> None:
    assert health.raycluster({}) == ("Progressing", "no status yet")


def test_raycluster_in_deprecated_failed_state_is_degraded() -> None:
    assert health.raycluster({"state": "failed", "reason": "head pod crashed"}) == ("Degraded", "head pod crashed")


@pytest.mark.parametrize("deployment, job, expected", [
    pytest.param("", "", "Progressing", id="new"),
    pytest.param("New", "", "Progressing", id="new-spelled-out"),
    pytest.param("Initializing", "", "Progressing", id="initializing"),
    pytest.param("Running", "PENDING", "Progressing", id="running-pending"),
    pytest.param("Running", "RUNNING", "Progressing", id="running"),
    pytest.param("Retrying", "FAILED", "Progressing", id="retrying"),
    pytest.param("Waiting", "", "Progressing", id="waiting-interactive"),
    pytest.param("Suspending", "RUNNING", "Suspended", id="suspending"),
    pytest.param("Suspended", "STOPPED", "Suspended", id="suspended"),
    pytest.param("Complete", "SUCCEEDED", "Healthy", id="complete-succeeded"),
    pytest.param("Complete", "FAILED", "Degraded", id="complete-failed"),
    pytest.param("Complete", "STOPPED", "Degraded", id="complete-stopped"),
    pytest.param("Failed", "RUNNING", "Degraded", id="failed"),
    pytest.param("ValidationFailed", "", "Degraded", id="validation-failed"),
    pytest.param("SomethingNew", "RUNNING", "Unknown", id="unknown-deployment-status"),
])
def test_rayjob_health_for_every_deployment_status(deployment: str, job: str, expected: str) -> None:
    assert health.rayjob({"jobDeploymentStatus": deployment, "jobStatus": job})[0] == expected


@pytest.mark.parametrize("case, expected", [
    pytest.param("running", ("Progressing", "Running/RUNNING"), id="running"),
    pytest.param("succeeded", ("Healthy", "Complete/SUCCEEDED"), id="succeeded"),
    pytest.param("app-failed", ("Degraded", "Complete/FAILED"), id="complete-but-failed"),
    pytest.param("deadline-exceeded", ("Degraded", "Failed/RUNNING"), id="deadline-exceeded"),
    pytest.param("validation-failed", ("Degraded", "ValidationFailed/PENDING"), id="validation-failed"),
])
def test_rayjob_health_from_full_status(case: str, expected: tuple[str, str]) -> None:
    assert health.rayjob(status("rayjob", case)) == expected


def test_rayjob_without_status_is_a_new_pending_run() -> None:
    assert health.rayjob({}) == ("Progressing", "New/PENDING")


@pytest.mark.parametrize("case, expected", [
    pytest.param("ready", ("Healthy", "ready"), id="ready"),
    pytest.param("not-ready", ("Degraded", "application echo: DEPLOY_FAILED: ImportError: echo"), id="ready-false"),
    pytest.param("deploying", ("Progressing", "application fruit: DEPLOYING: deployment Mango: UPDATING"),
                 id="an-application-still-deploying"),
    pytest.param("unhealthy", ("Degraded", "application echo: UNHEALTHY: deployment Echo: UNHEALTHY: A replica's "
                                           "health check failed."), id="an-unhealthy-deployment"),
    pytest.param("upgrade-stuck", ("Degraded", "upgrade stuck: on the new cluster, application echo: DEPLOY_FAILED: "
                                               "ModuleNotFoundError: No module named 'echo'"),
                 id="the-new-clusters-applications-failed"),
    pytest.param("upgrading", ("Progressing", "upgrade in progress"), id="upgrade-in-progress"),
    pytest.param("no-conditions-yet", ("Progressing", "no Ready condition yet"), id="no-conditions-yet"),
    pytest.param("initializing", ("Progressing", "Initializing"), id="initializing"),
])
def test_rayservice_health(case: str, expected: tuple[str, str]) -> None:
    assert health.rayservice(status("rayservice", case)) == expected


def live(kind: str, status_: dict[str, Any]) -> LiveObject:
    group = "" if kind == "ConfigMap" else "ray.io"
    manifest = {"apiVersion": "v1" if kind == "ConfigMap" else "ray.io/v1", "kind": kind, "metadata": {"name": "x"}}
    return LiveObject(ObjectRef(group, kind, "ray-prod", "x"), manifest, status_)


@pytest.mark.parametrize("obj, expected", [
    pytest.param(None, ("Missing", "not found"), id="missing"),
    pytest.param(live("ConfigMap", {}), ("Healthy", "exists"), id="configmap-exists"),
    pytest.param(live("RayCluster", status("raycluster", "replica-failure")),
                 ("Degraded", "ReplicaFailure: FailedCreateWorkerPod"), id="raycluster"),
    pytest.param(live("RayJob", status("rayjob", "app-failed")), ("Degraded", "Complete/FAILED"), id="rayjob"),
    pytest.param(live("RayService", status("rayservice", "upgrading")), ("Progressing", "upgrade in progress"),
                 id="rayservice"),
])
def test_health_of_dispatches_by_kind(obj: LiveObject | None, expected: tuple[str, str]) -> None:
    assert health.of(obj) == expected


@pytest.mark.parametrize("healths, expected", [
    pytest.param([], "Healthy", id="empty-is-healthy"),
    pytest.param(["Healthy", "Healthy"], "Healthy", id="all-healthy"),
    pytest.param(["Healthy", "Unknown"], "Unknown", id="unknown-beats-healthy"),
    pytest.param(["Unknown", "Suspended"], "Suspended", id="suspended-beats-unknown"),
    pytest.param(["Suspended", "Progressing", "Healthy"], "Progressing", id="progressing-beats-suspended"),
    pytest.param(["Progressing", "Missing"], "Missing", id="missing-beats-progressing"),
    pytest.param(["Degraded", "Missing", "Progressing", "Healthy"], "Degraded", id="degraded-beats-everything"),
])
def test_worst_health_is_the_least_healthy_object(healths: list[str], expected: str) -> None:
    assert Health.worst(healths) == expected


@pytest.mark.parametrize("generation, observed, expected", [
    pytest.param(3, 2, "Progressing", id="status-older-than-spec"),
    pytest.param(3, 3, "Healthy", id="status-current"),
    pytest.param(3, None, "Healthy", id="operator-reports-no-observed-generation"),
])
def test_raycluster_status_older_than_its_spec_is_progressing(generation: int, observed: int | None,
                                                              expected: str) -> None:
    status = {"state": "ready", "readyWorkerReplicas": 1, "desiredWorkerReplicas": 1,
              **({"observedGeneration": observed} if observed else {})}
    obj = LiveObject(ObjectRef("ray.io", "RayCluster", "ns", "c"), {"metadata": {"generation": generation}}, status)
    assert health.of(obj)[0] == expected


def _cluster(generation: int, spec: dict[str, Any], status_: dict[str, Any], written: str) -> LiveObject:
    manifest = {"metadata": {"generation": generation, "managedFields": [
        {"manager": "ray-gitops", "operation": "Apply", "time": written},
        {"manager": "kuberay-operator", "operation": "Update", "subresource": "status", "time": "2026-12-03T10:10:00Z"},
    ]}, "spec": spec}
    return LiveObject(ObjectRef("ray.io", "RayCluster", "ns", "c"), manifest, status_)


WRITTEN = "2026-12-03T10:00:00Z"  # when the spec last changed
READY_1_OF_1 = {"state": "ready", "readyWorkerReplicas": 1, "desiredWorkerReplicas": 1, "observedGeneration": 2}


def _spec(replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {"workerGroupSpecs": [{"groupName": "w", "replicas": replicas, "minReplicas": 0, "maxReplicas": 5}],
            **extra}


@pytest.mark.parametrize("spec, status_, seconds_after_write, expected", [
    pytest.param(_spec(), READY_1_OF_1, 3600, ("Healthy", "1/1 workers ready"),
                 id="template-change-without-recreate-operator-writes-no-status-for-it"),
    pytest.param(_spec(3), READY_1_OF_1, 3600, ("Progressing", "operator has not yet observed generation 3 "
                                                "(status is for 2)"), id="scale-not-yet-seen"),
    pytest.param(_spec(1, suspend=True), READY_1_OF_1, 3600, ("Progressing", "operator has not yet observed "
                                                              "generation 3 (status is for 2)"),
                 id="suspend-not-yet-seen"),
    pytest.param(_spec(1, upgradeStrategy={"type": "Recreate"}), READY_1_OF_1, 5,
                 ("Progressing", "operator has not yet observed generation 3 (status is for 2)"),
                 id="recreate-within-grace"),
    pytest.param(_spec(1, upgradeStrategy={"type": "Recreate"}), READY_1_OF_1, 31, ("Healthy", "1/1 workers ready"),
                 id="recreate-after-grace-nothing-to-replace"),
    pytest.param({"workerGroupSpecs": [{"groupName": "w", "replicas": 2, "suspend": True},
                                       {"groupName": "v", "replicas": 1, "numOfHosts": 1}]},
                 READY_1_OF_1, 3600, ("Healthy", "1/1 workers ready"), id="a-suspended-group-counts-no-workers"),
])
def test_a_status_behind_its_generation_is_stale_only_where_kuberay_would_write_it(
        spec: dict[str, Any], status_: dict[str, Any], seconds_after_write: float, expected: tuple[str, str]) -> None:
    """KubeRay 1.6 writes status only when a field of it changes, so a template-only change leaves
    observedGeneration behind for good: that alone is not Progressing (it was, forever)."""
    now = datetime.fromisoformat(WRITTEN.replace("Z", "+00:00")).timestamp() + seconds_after_write
    assert health.of(_cluster(3, spec, status_, WRITTEN), now=now) == expected
