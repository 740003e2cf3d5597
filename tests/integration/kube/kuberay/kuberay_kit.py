"""Helpers for tests against the real KubeRay operator: objects, server-side apply, bounded waits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

from tests.eventually import eventually

GROUP, VERSION = "ray.io", "v1"
APPLY_PATCH = "application/apply-patch+yaml"
MANAGER = "ray-gitops-test"
IMAGE = "rayproject/ray:2.60.0"
WAIT_S = 60.0

T = TypeVar("T")


def pod_template(cpu: str = "1", memory: str = "2Gi", **container: Any) -> dict[str, Any]:
    """A Ray pod template: one container with equal CPU/memory requests and limits."""
    resources = {"cpu": cpu, "memory": memory}
    return {"spec": {"containers": [{
        "name": "ray", "image": IMAGE, "resources": {"requests": resources, "limits": resources}, **container,
    }]}}


def raycluster_spec(replicas: int = 1, worker_template: dict[str, Any] | None = None) -> dict[str, Any]:
    """One head and one worker group ``workers`` (min 0, max 10)."""
    return {
        "rayVersion": "2.60.0",
        "headGroupSpec": {"rayStartParams": {}, "template": pod_template()},
        "workerGroupSpecs": [{
            "groupName": "workers", "replicas": replicas, "minReplicas": 0, "maxReplicas": 10,
            "rayStartParams": {}, "template": worker_template or pod_template(),
        }],
    }


def ray_object(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A ray.io/v1 object."""
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": metadata, "spec": spec}


def plural(kind: str) -> str:
    """rayclusters, rayjobs, rayservices."""
    return f"{kind.lower()}s"


def apply(api_client: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply of a ray.io object as field manager ``MANAGER``; the applied object.

    The body is parsed here because the client deserialises only 200 for patch (a create is 201).
    """
    response = client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural(body["kind"]), body["metadata"]["name"], body,
        field_manager=MANAGER, _content_type=APPLY_PATCH, _preload_content=False,
    )
    result: dict[str, Any] = json.loads(response.data)
    return result


def get(api_client: client.ApiClient, namespace: str, kind: str, name: str) -> dict[str, Any]:
    """The live ray.io object."""
    result: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural(kind), name)
    return result


def delete(api_client: client.ApiClient, namespace: str, kind: str, name: str, propagation: str | None = None) -> None:
    """Delete a ray.io object (``propagation``: Background, Foreground, Orphan, or the server default)."""
    body = client.V1DeleteOptions(propagation_policy=propagation) if propagation else None
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, plural(kind), name, body=body)


def cluster_pods(api_client: client.ApiClient, namespace: str, cluster: str) -> list[client.V1Pod]:
    """The Pods of a RayCluster (label ``ray.io/cluster``), head first, then by name."""
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"ray.io/cluster={cluster}").items
    return sorted(pods, key=lambda p: (p.metadata.labels.get("ray.io/node-type") != "head", p.metadata.name))


def cluster_services(api_client: client.ApiClient, namespace: str, cluster: str) -> list[client.V1Service]:
    """The Services of a RayCluster (label ``ray.io/cluster``)."""
    return list(client.CoreV1Api(api_client).list_namespaced_service(
        namespace, label_selector=f"ray.io/cluster={cluster}").items)


def pod_ready(pod: client.V1Pod) -> bool:
    """Running with condition Ready=True."""
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions)


def workers(pods: list[client.V1Pod]) -> list[client.V1Pod]:
    """The worker Pods among ``pods``."""
    return [p for p in pods if p.metadata.labels.get("ray.io/node-type") == "worker"]


def wait_until(what: str, observe: Callable[[], T], done: Callable[[T], bool], timeout: float = WAIT_S) -> T:
    """Observe until ``done(observation)``; on timeout fail with the last observation."""
    def check() -> tuple[T]:
        observed = observe()
        assert done(observed), f"last observed:\n{observed}"
        return (observed,)  # truthy even when the observation is not
    return eventually(check, timeout, 0.25, what)[0]


def cluster_ready(status: dict[str, Any], workers_ready: int) -> bool:
    """RayCluster status says ready with this many ready workers."""
    return status.get("state") == "ready" and status.get("readyWorkerReplicas") == workers_ready


def field_paths(fields: dict[str, Any], prefix: str = "") -> set[str]:
    """The leaf paths of a managedFields ``fieldsV1`` tree, e.g. ``.spec.suspend``, ``.metadata.finalizers``.

    A keyed list item (``k:{...}``) or set member (``v:...``) is one leaf: ``.metadata.finalizers[v:"x"]``.
    """
    paths: set[str] = set()
    for key, child in fields.items():
        if key == ".":
            continue
        path = prefix + (f".{key[2:]}" if key.startswith("f:") else f"[{key}]")
        paths |= field_paths(child, path) if child and not key.startswith(("k:", "v:")) else {path}
    return paths


def managers(obj: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """(manager, operation, subresource) -> the field paths it owns, from ``metadata.managedFields``."""
    return {
        (entry["manager"], entry["operation"], entry.get("subresource", "")): field_paths(entry.get("fieldsV1", {}))
        for entry in obj["metadata"].get("managedFields", [])
    }
