"""What the real KubeRay operator (v1.6.2) writes on the objects users apply and on the children it
creates: status fields, ``ray.io/*`` labels and annotations, finalizers, ownerReferences and
field managers. Each test prints what it saw; the assertions are those observations."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kuberay_kit import (
    MANAGER,
    apply,
    cluster_pods,
    cluster_ready,
    cluster_services,
    get,
    managers,
    ray_object,
    raycluster_spec,
    wait_until,
    workers,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.kube, pytest.mark.operator]

OPERATOR = "kuberay-operator"  # the operator's field manager (its user agent's name)
KUBERAY_VERSION = "v1.6.2"
RAYCLUSTER_STATUS_FIELDS = {
    "availableWorkerReplicas", "conditions", "desiredCPU", "desiredGPU", "desiredMemory", "desiredTPU",
    "desiredWorkerReplicas", "endpoints", "head", "lastUpdateTime", "maxWorkerReplicas",
    "observedGeneration", "readyWorkerReplicas", "state", "stateTransitionTimes",
}
RAYJOB_RUNNING_STATUS_FIELDS = {
    "dashboardURL", "failed", "jobDeploymentStatus", "jobId", "rayClusterName", "rayJobInfo", "startTime",
    "succeeded",
}


def _k8s(api_client: client.ApiClient, obj: Any) -> dict[str, Any]:
    """A typed client object as the plain dict the API server sent."""
    plain: dict[str, Any] = api_client.sanitize_for_serialization(obj)
    return plain


def _owners(obj: dict[str, Any]) -> list[tuple[str, str, bool, bool]]:
    return [(o["kind"], o["name"], o.get("controller", False), o.get("blockOwnerDeletion", False))
            for o in obj["metadata"].get("ownerReferences", [])]


def _record(what: str, facts: Any) -> None:
    print(f"{what}: {json.dumps(facts, sort_keys=True, default=sorted)}")


def _managers(obj: dict[str, Any]) -> dict[str, list[str]]:
    """``managers(obj)`` keyed by "manager operation [subresource]", for printing."""
    return {" ".join(filter(None, key)): sorted(paths) for key, paths in managers(obj).items()}


def test_operator_writes_only_status_on_a_raycluster_and_labels_its_pods_and_service(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    ns = kuberay_namespace
    applied = apply(kuberay_client, ns, ray_object("RayCluster", "facts", raycluster_spec(replicas=1)))
    wait_until("RayCluster facts ready", lambda: get(kuberay_client, ns, "RayCluster", "facts").get("status", {}),
               lambda s: cluster_ready(s, 1))
    live = get(kuberay_client, ns, "RayCluster", "facts")
    pods = cluster_pods(kuberay_client, ns, "facts")
    head, worker = _k8s(kuberay_client, pods[0]), _k8s(kuberay_client, workers(pods)[0])
    (service,) = (_k8s(kuberay_client, s) for s in cluster_services(kuberay_client, ns, "facts"))
    status = live["status"]
    _record("RayCluster managers", _managers(live))
    _record("RayCluster status", status)
    _record("head Pod metadata", {k: head["metadata"].get(k) for k in ("labels", "annotations", "finalizers")})
    _record("worker Pod metadata", {k: worker["metadata"].get(k) for k in ("labels", "annotations", "finalizers")})
    _record("head Service", {"labels": service["metadata"]["labels"], "spec": service["spec"]})

    fields = managers(live)
    assert set(fields) == {(MANAGER, "Apply", ""), (OPERATOR, "Update", "status")}
    assert all(path.startswith(".status.") for path in fields[(OPERATOR, "Update", "status")])
    assert {k: live["metadata"].get(k) for k in ("labels", "annotations", "finalizers")} == dict.fromkeys(
        ("labels", "annotations", "finalizers")), "the operator adds no metadata to a RayCluster"
    assert set(status) == RAYCLUSTER_STATUS_FIELDS, "minWorkerReplicas is omitted when it is 0"
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {
        "HeadPodReady": ("True", "HeadPodRunningAndReady"),
        "RayClusterProvisioned": ("True", "AllPodRunningAndReadyFirstTime"),
        "RayClusterSuspended": ("False", "RayClusterSuspended"),
        "RayClusterSuspending": ("False", "RayClusterSuspending"),
    }
    assert status["endpoints"] == {
        "client": "10001", "dashboard": "8265", "gcs-server": "6379", "metrics": "8080", "serve": "8000"}
    assert status["head"] == {"podName": head["metadata"]["name"], "podIP": head["status"]["podIP"],
                              "serviceName": "facts-head-svc", "serviceIP": head["status"]["podIP"]}, (
        "the head Service is headless, so serviceIP is the Pod IP")
    assert status["stateTransitionTimes"].keys() == {"ready"}
    assert (status["readyWorkerReplicas"], status["maxWorkerReplicas"], status["observedGeneration"]) == (1, 10, 1)

    common = {"app.kubernetes.io/created-by": OPERATOR, "app.kubernetes.io/name": "kuberay", "ray.io/cluster": "facts"}
    assert head["metadata"]["labels"] == {**common, "ray.io/group": "headgroup", "ray.io/identifier": "facts-head",
                                          "ray.io/is-ray-node": "yes", "ray.io/node-type": "head"}
    assert worker["metadata"]["labels"] == {**common, "ray.io/group": "workers", "ray.io/identifier": "facts-worker",
                                            "ray.io/is-ray-node": "yes", "ray.io/node-type": "worker",
                                            "ray.io/worker-group-replica-index": "0"}
    annotations = head["metadata"]["annotations"]
    assert annotations.keys() == {
        "ray.io/ft-enabled", "ray.io/kuberay-version", "ray.io/upgrade-strategy-recreate-hash"}
    assert (annotations["ray.io/ft-enabled"], annotations["ray.io/kuberay-version"]) == ("false", KUBERAY_VERSION)
    assert "annotations" not in worker["metadata"], "worker Pods carry no annotations"
    for pod in (head, worker):
        assert "finalizers" not in pod["metadata"]
        assert _owners(pod) == [("RayCluster", "facts", True, True)]
        assert set(managers(pod)) == {(OPERATOR, "Update", ""), ("kwok", "Update", "status")}
    assert service["metadata"]["labels"] == {**common, "ray.io/identifier": "facts-head", "ray.io/node-type": "head"}
    assert service["spec"]["clusterIP"] == "None"
    assert _owners(service) == [("RayCluster", "facts", True, True)]

    reapplied = apply(kuberay_client, ns, ray_object("RayCluster", "facts", raycluster_spec(replicas=1)))
    assert reapplied["metadata"]["resourceVersion"] == get(
        kuberay_client, ns, "RayCluster", "facts")["metadata"]["resourceVersion"]
    assert reapplied["metadata"]["generation"] == applied["metadata"]["generation"] == 1, (
        "re-applying the unchanged RayCluster changes nothing: the operator owns only status")


def test_operator_adds_a_finalizer_and_takes_over_worker_groups_of_a_rayjob(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    ns = kuberay_namespace
    job = ray_object("RayJob", "facts-job", {"entrypoint": "python -c 'print(1)'",
                                             "rayClusterSpec": raycluster_spec(replicas=1)})
    apply(kuberay_client, ns, job)
    status = wait_until("RayJob facts-job Running", lambda: get(kuberay_client, ns, "RayJob", "facts-job").get(
        "status", {}), lambda s: s.get("jobDeploymentStatus") == "Running")
    live = get(kuberay_client, ns, "RayJob", "facts-job")
    cluster = get(kuberay_client, ns, "RayCluster", status["rayClusterName"])
    submitter = _k8s(kuberay_client, client.BatchV1Api(kuberay_client).read_namespaced_job("facts-job", ns))
    job_service = _k8s(kuberay_client, wait_until(
        "the RayJob's own head Service", lambda: client.CoreV1Api(kuberay_client).list_namespaced_service(
            ns, field_selector="metadata.name=facts-job-head-svc").items, bool)[0])
    _record("RayJob metadata", {k: live["metadata"].get(k) for k in ("labels", "annotations", "finalizers")})
    _record("RayJob managers", _managers(live))
    _record("RayJob status while Running", status)
    _record("RayJob's RayCluster", {"labels": cluster["metadata"].get("labels"), "owners": _owners(cluster),
                                    "managers": _managers(cluster)})
    _record("submitter Job", {"labels": submitter["metadata"]["labels"], "owners": _owners(submitter),
                              "spec": submitter["spec"]})
    _record("RayJob Service", {"labels": job_service["metadata"]["labels"], "owners": _owners(job_service)})

    assert live["metadata"]["finalizers"] == ["ray.io/rayjob-finalizer"]
    assert "labels" not in live["metadata"] and "annotations" not in live["metadata"]
    fields = managers(live)
    assert set(fields) == {(MANAGER, "Apply", ""), (OPERATOR, "Update", ""), (OPERATOR, "Update", "status")}
    assert fields[(OPERATOR, "Update", "")] == {
        '.metadata.finalizers[v:"ray.io/rayjob-finalizer"]',
        ".spec.rayClusterSpec.headGroupSpec.template.metadata",
        ".spec.rayClusterSpec.workerGroupSpecs",
    }, "adding its finalizer, the operator writes back the spec and takes over the atomic worker group list"
    assert ".spec.rayClusterSpec.workerGroupSpecs" not in fields[(MANAGER, "Apply", "")]
    assert set(status) - {"rayClusterStatus"} == RAYJOB_RUNNING_STATUS_FIELDS

    prefix = "ray.io/originated-from"
    assert cluster["metadata"]["labels"] == {
        "ray.io/job-submission-mode": "K8sJobMode", f"{prefix}-cr-name": "facts-job", f"{prefix}-crd": "RayJob"}
    assert _owners(cluster) == [("RayJob", "facts-job", True, True)]
    assert set(managers(cluster)) == {(OPERATOR, "Update", ""), (OPERATOR, "Update", "status")}
    assert submitter["metadata"]["labels"] == {
        "app.kubernetes.io/created-by": OPERATOR, f"{prefix}-cr-name": "facts-job", f"{prefix}-crd": "RayJob"}
    assert _owners(submitter) == [("RayJob", "facts-job", True, True)]
    (container,) = submitter["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "ray-job-submitter"
    assert {"name": "RAY_JOB_SUBMISSION_ID", "value": status["jobId"]} in container["env"]
    assert submitter["spec"]["backoffLimit"] == 2
    assert job_service["metadata"]["labels"] == {
        "ray.io/identifier": "facts-job-head", "ray.io/node-type": "head",
        f"{prefix}-cr-name": "facts-job", f"{prefix}-crd": "RayJob"}
    assert _owners(job_service) == [("RayJob", "facts-job", True, True)]

    with pytest.raises(ApiException) as raised:
        apply(kuberay_client, ns, job)
    message = json.loads(raised.value.body)["message"]
    assert raised.value.status == 409, "re-applying the unchanged RayJob conflicts with the operator"
    assert f'conflict with "{OPERATOR}"' in message and ".spec.rayClusterSpec.workerGroupSpecs" in message, message
