"""RayClusters under the real KubeRay operator: Pods on fake nodes, readiness, scaling, deletion
through the garbage collector, and what a pod-template change does with and without
``upgradeStrategy: Recreate``. Nothing here writes ``status``."""

from __future__ import annotations

import time
from typing import Any

import kuberay_stack
import pytest
from kuberay_kit import (
    apply,
    cluster_pods,
    cluster_ready,
    cluster_services,
    delete,
    get,
    pod_ready,
    pod_template,
    ray_object,
    raycluster_spec,
    wait_until,
    workers,
)
from kubernetes import client

pytestmark = [pytest.mark.kube, pytest.mark.operator]

# The operator reconciles a changed RayCluster within a second here; a change it ignores is
# checked after this long.
TEMPLATE_SETTLE_S = 5.0


def _status(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = get(api_client, namespace, "RayCluster", name).get("status", {})
    return status


def _ready_pods(api_client: client.ApiClient, namespace: str, name: str, worker_count: int) -> list[client.V1Pod]:
    """Wait until the RayCluster is ``ready`` with ``worker_count`` ready workers and its Pods agree."""
    wait_until(f"RayCluster {name} ready with {worker_count} workers",
               lambda: _status(api_client, namespace, name), lambda s: cluster_ready(s, worker_count))
    return wait_until(
        f"1 head + {worker_count} worker Pods of {name} Running and Ready",
        lambda: cluster_pods(api_client, namespace, name),
        lambda pods: len(pods) == 1 + worker_count and all(pod_ready(p) for p in pods))


def test_raycluster_becomes_ready_on_fake_nodes_and_scales_to_three_workers(
    kuberay: kuberay_stack.OperatorStack, kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "scale", raycluster_spec(replicas=1)))

    pods = _ready_pods(kuberay_client, kuberay_namespace, "scale", 1)
    assert [p.metadata.labels["ray.io/node-type"] for p in pods] == ["head", "worker"]
    assert {p.spec.node_name for p in pods} <= set(kuberay.nodes)
    status = _status(kuberay_client, kuberay_namespace, "scale")
    assert (status["desiredWorkerReplicas"], status["availableWorkerReplicas"]) == (1, 1)
    assert status["head"]["podName"] == pods[0].metadata.name

    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "scale", raycluster_spec(replicas=3)))

    pods = _ready_pods(kuberay_client, kuberay_namespace, "scale", 3)
    assert len(workers(pods)) == 3
    status = _status(kuberay_client, kuberay_namespace, "scale")
    assert (status["desiredWorkerReplicas"], status["availableWorkerReplicas"]) == (3, 3)
    assert (status["desiredCPU"], status["desiredMemory"]) == ("4", "8Gi"), "1 CPU and 2Gi per Pod, 4 Pods"


def test_three_worker_raycluster_is_ready_seconds_after_create(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    """Time from create to ``ready`` with 3 ready workers (printed; bounded by the wait)."""
    started = time.monotonic()
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "timed", raycluster_spec(replicas=3)))

    wait_until("RayCluster timed ready with 3 workers",
               lambda: _status(kuberay_client, kuberay_namespace, "timed"), lambda s: cluster_ready(s, 3))

    print(f"RayCluster create -> ready with 3 workers: {time.monotonic() - started:.2f}s")


def test_deleting_a_raycluster_lets_the_garbage_collector_remove_its_pods_and_services(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "doomed", raycluster_spec(replicas=2)))
    pods = _ready_pods(kuberay_client, kuberay_namespace, "doomed", 2)
    services = cluster_services(kuberay_client, kuberay_namespace, "doomed")
    uid = get(kuberay_client, kuberay_namespace, "RayCluster", "doomed")["metadata"]["uid"]
    assert [s.metadata.name for s in services] == ["doomed-head-svc"]
    for child in [*pods, *services]:
        owner = child.metadata.owner_references
        assert [(o.kind, o.uid, o.controller, o.block_owner_deletion) for o in owner] == [
            ("RayCluster", uid, True, True)], f"{child.metadata.name} is not owned by the RayCluster"

    delete(kuberay_client, kuberay_namespace, "RayCluster", "doomed")

    wait_until("Pods and Services of doomed gone",
               lambda: (cluster_pods(kuberay_client, kuberay_namespace, "doomed"),
                        cluster_services(kuberay_client, kuberay_namespace, "doomed")),
               lambda children: children == ([], []))


def test_orphan_deletion_of_a_raycluster_leaves_its_pods_running_without_owner(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    """The operator does not delete Pods itself: with propagation Orphan they stay, unowned."""
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "orphans", raycluster_spec(replicas=1)))
    before = {p.metadata.uid for p in _ready_pods(kuberay_client, kuberay_namespace, "orphans", 1)}

    delete(kuberay_client, kuberay_namespace, "RayCluster", "orphans", propagation="Orphan")

    pods = wait_until("the garbage collector to drop the ownerReferences of orphans' Pods",
                      lambda: cluster_pods(kuberay_client, kuberay_namespace, "orphans"),
                      lambda pods: all(not p.metadata.owner_references for p in pods))
    assert {p.metadata.uid for p in pods} == before
    assert all(pod_ready(p) for p in pods)


def _with_env(value: str) -> dict[str, Any]:
    return pod_template(env=[{"name": "TEMPLATE_VERSION", "value": value}])


def _env(pod: client.V1Pod) -> str:
    env = {e.name: e.value for e in pod.spec.containers[0].env or []}
    return str(env.get("TEMPLATE_VERSION"))


def _spec(worker_env: str, replicas: int = 1, **extra: Any) -> dict[str, Any]:
    return {**raycluster_spec(replicas=replicas, worker_template=_with_env(worker_env)), **extra}


def test_upgrade_strategy_recreate_replaces_every_pod_on_a_pod_template_change(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    recreate = {"upgradeStrategy": {"type": "Recreate"}}
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "recreate", _spec("v1", **recreate)))
    old = {p.metadata.uid for p in _ready_pods(kuberay_client, kuberay_namespace, "recreate", 1)}

    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "recreate", _spec("v2", **recreate)))

    pods = wait_until(
        "a new head and a new worker with the v2 template, Running and Ready",
        lambda: cluster_pods(kuberay_client, kuberay_namespace, "recreate"),
        lambda pods: len(pods) == 2 and not {p.metadata.uid for p in pods} & old and all(map(pod_ready, pods)))
    assert [_env(p) for p in workers(pods)] == ["v2"]
    wait_until("RayCluster recreate ready again", lambda: _status(kuberay_client, kuberay_namespace, "recreate"),
               lambda s: cluster_ready(s, 1))


def test_without_upgrade_strategy_a_pod_template_change_reaches_only_new_pods(
    kuberay_client: client.ApiClient, kuberay_namespace: str
) -> None:
    """Old Pods keep the old template; Pods created later get the new one (a mixed group).

    The operator does not write status for a change that alters no status field, so
    ``observedGeneration`` stays behind ``generation`` after a template-only change.
    """
    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "inplace", _spec("v1")))
    old = _ready_pods(kuberay_client, kuberay_namespace, "inplace", 1)

    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "inplace", _spec("v2")))
    time.sleep(TEMPLATE_SETTLE_S)

    live = get(kuberay_client, kuberay_namespace, "RayCluster", "inplace")
    assert (live["metadata"]["generation"], live["status"]["observedGeneration"]) == (2, 1)
    assert [p.metadata.uid for p in cluster_pods(kuberay_client, kuberay_namespace, "inplace")] == [
        p.metadata.uid for p in old]

    apply(kuberay_client, kuberay_namespace, ray_object("RayCluster", "inplace", _spec("v2", replicas=2)))

    pods = _ready_pods(kuberay_client, kuberay_namespace, "inplace", 2)
    old_worker = workers(old)[0].metadata.uid
    assert sorted((p.metadata.uid == old_worker, _env(p)) for p in workers(pods)) == [
        (False, "v2"), (True, "v1")], "the old worker keeps the old template, the new one gets the new"
    assert pods[0].metadata.uid == old[0].metadata.uid, "the head Pod is not replaced"
    live = get(kuberay_client, kuberay_namespace, "RayCluster", "inplace")
    assert live["status"]["observedGeneration"] == live["metadata"]["generation"] == 3
