"""RayJobs under the real KubeRay operator, with no Ray head behind the Pods (kwok fakes them).

What the operator does then, as observed with KubeRay v1.6.2: it creates (or selects) the
RayCluster, waits for it to be ready, creates the submitter Kubernetes Job and goes to
``Running`` with an empty ``jobStatus``. kwok completes the submitter Pod, so the Job is Complete
within seconds. The dashboard (``<cluster>-head-svc.<ns>.svc.cluster.local:8265``) cannot be
reached, so the Ray job never reports; 30 s after the submitter finished the operator marks the
RayJob ``Failed`` with ``jobStatus: FAILED`` and reason
``JobDeploymentStatusTransitionGracePeriodExceeded``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from kuberay_kit import (
    apply,
    cluster_pods,
    cluster_ready,
    get,
    pod_ready,
    ray_object,
    raycluster_spec,
    wait_until,
)
from kubernetes import client

pytestmark = [pytest.mark.kube, pytest.mark.operator]

SUBMITTER_FINISHED_TIMEOUT_S = 30  # KubeRay's DefaultSubmitterFinishedTimeout
JOB_WAIT_S = 120.0


def _status(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(api_client, namespace, "RayJob", name).get("status", {})
    return status


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_rayjobs_without_a_ray_head_fail_30s_after_their_submitter_completes(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    ns = kuberay_namespace
    apply(kuberay_client, ns, ray_object("RayCluster", "shared", raycluster_spec(replicas=1)))
    wait_until("RayCluster shared ready", lambda: get(kuberay_client, ns, "RayCluster", "shared").get("status", {}),
               lambda s: cluster_ready(s, 1))
    own_cluster = {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": raycluster_spec(replicas=1)}
    selected = {"entrypoint": "python -c 'print(2)'", "clusterSelector": {"ray.io/cluster": "shared"}}
    apply(kuberay_client, ns, ray_object("RayJob", "own-cluster", own_cluster))
    apply(kuberay_client, ns, ray_object("RayJob", "selected", selected))

    running = {
        name: wait_until(f"RayJob {name} Running", lambda name=name: _status(kuberay_client, ns, name),
                         lambda s: s.get("jobDeploymentStatus") in ("Running", "Failed"))
        for name in ("own-cluster", "selected")
    }
    final = {
        name: wait_until(f"RayJob {name} Failed", lambda name=name: _status(kuberay_client, ns, name),
                         lambda s: s.get("jobDeploymentStatus") == "Failed", timeout=JOB_WAIT_S)
        for name in ("own-cluster", "selected")
    }

    for name, status in final.items():
        print(f"RayJob {name} status without a Ray head: {status}")
        cluster = status["rayClusterName"]
        assert running[name]["jobDeploymentStatus"] == "Running"
        assert running[name].get("jobStatus", "") == "", "no jobStatus while Running: the dashboard never answers"
        assert running[name]["dashboardURL"] == f"{cluster}-head-svc.{ns}.svc.cluster.local:8265"
        assert status["jobId"].startswith(f"{name}-")
        assert {k: status.get(k) for k in ("jobStatus", "reason", "failed", "succeeded", "rayJobInfo")} == {
            "jobStatus": "FAILED", "reason": "JobDeploymentStatusTransitionGracePeriodExceeded",
            "failed": 1, "succeeded": 0, "rayJobInfo": {}}
        assert status["message"].startswith("The RayJob submitter finished at ")
        assert status["message"].endswith(
            f"but the ray job did not reach terminal state within {SUBMITTER_FINISHED_TIMEOUT_S}s")
        assert "conditions" not in status
        assert status.get("rayClusterStatus", {}).get("state") != "ready", (
            "rayClusterStatus is a snapshot from before the cluster was ready; it is not refreshed")

        submitter = client.BatchV1Api(kuberay_client).read_namespaced_job(name, ns)
        complete = {c.type: c for c in submitter.status.conditions or []}["Complete"]
        assert (complete.status, submitter.status.succeeded) == ("True", 1), "kwok completes the submitter Pod"
        waited = (_time(status["endTime"]) - _time(complete.last_transition_time)).total_seconds()
        assert waited >= SUBMITTER_FINISHED_TIMEOUT_S - 1, f"Failed {waited:.0f}s after the submitter completed"

    assert final["selected"]["rayClusterName"] == "shared"
    own = final["own-cluster"]["rayClusterName"]
    assert own.startswith("own-cluster-")
    assert get(kuberay_client, ns, "RayCluster", own)["status"]["state"] == "ready", (
        "the RayJob's own RayCluster stays (shutdownAfterJobFinishes is false)")
    assert all(pod_ready(p) for p in cluster_pods(kuberay_client, ns, own))
