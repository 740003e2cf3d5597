"""Smoke tests proving the test control plane is a real kube-apiserver serving the KubeRay CRDs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import kube_controlplane
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
APPLY_PATCH = "application/apply-patch+yaml"
MANAGER = "ray-gitops-test"
OTHER_MANAGER = "someone-else"
INT32_MAX = 2147483647


def raycluster(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal valid RayCluster: one head, one worker group without max/minReplicas or numOfHosts."""
    pod = {"spec": {"containers": [{"name": "ray", "image": "rayproject/ray:2.60.0"}]}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": pod},
            "workerGroupSpecs": [{"groupName": "workers", "replicas": 1, "template": pod}],
            **spec,
        },
    }


@pytest.fixture
def custom_objects(kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[client.CustomObjectsApi]:
    with kube_control_plane.api_client() as api_client:
        yield client.CustomObjectsApi(api_client)


def apply(
    api: client.CustomObjectsApi, namespace: str, body: dict[str, Any], manager: str = MANAGER, **kwargs: Any
) -> dict[str, Any]:
    """Server-side apply of a RayCluster; kwargs go to the API call (dry_run, force).

    The body is parsed here because client 37.0.2 deserialises only 200 for patch: an apply that
    creates the object (201 Created) would return None.
    """
    response = api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"], body,
        field_manager=manager, _content_type=APPLY_PATCH, _preload_content=False, **kwargs,
    )
    result: dict[str, Any] = json.loads(response.data)
    return result


def get(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def error_message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


def test_schema_defaults_fill_worker_group_max_replicas(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    apply(custom_objects, kube_namespace, raycluster("defaults"))

    worker = get(custom_objects, kube_namespace, "defaults")["spec"]["workerGroupSpecs"][0]
    assert worker["maxReplicas"] == INT32_MAX
    assert worker["minReplicas"] == 0
    assert worker["numOfHosts"] == 1
    assert worker["replicas"] == 1


def test_string_where_integer_is_required_is_rejected_with_field_error(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    body = raycluster("bad-type")
    body["spec"]["workerGroupSpecs"][0]["replicas"] = "three"

    with pytest.raises(ApiException) as raised:
        custom_objects.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, body)

    assert raised.value.status == 422
    status = json.loads(raised.value.body)
    assert "spec.workerGroupSpecs[0].replicas in body must be of type integer" in status["message"]
    assert "spec.workerGroupSpecs[0].replicas" in {cause["field"] for cause in status["details"]["causes"]}


def test_apply_of_a_string_where_integer_is_required_fails_typed_patch_with_500(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    """Server-side apply type-checks the patch before validation, and reports that as a 500."""
    body = raycluster("bad-type-apply")
    body["spec"]["workerGroupSpecs"][0]["replicas"] = "three"

    with pytest.raises(ApiException) as raised:
        apply(custom_objects, kube_namespace, body)

    assert raised.value.status == 500
    message = error_message(raised.value)
    assert message.startswith("failed to create typed patch object")
    assert ".spec.workerGroupSpecs[0].replicas: expected numeric (int or float), got string" in message


def test_missing_head_group_spec_is_rejected_as_required(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    body = raycluster("no-head")
    del body["spec"]["headGroupSpec"]

    with pytest.raises(ApiException) as raised:
        apply(custom_objects, kube_namespace, body)

    assert raised.value.status == 422
    assert "spec.headGroupSpec: Required value" in error_message(raised.value)


def test_dry_run_apply_of_a_new_object_creates_nothing(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    returned = apply(custom_objects, kube_namespace, raycluster("dry-new"), dry_run="All")

    assert returned["spec"]["workerGroupSpecs"][0]["maxReplicas"] == INT32_MAX
    with pytest.raises(ApiException) as raised:
        get(custom_objects, kube_namespace, "dry-new")
    assert raised.value.status == 404


def test_dry_run_apply_of_a_change_leaves_the_object_unchanged(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    apply(custom_objects, kube_namespace, raycluster("dry-change"))
    before = get(custom_objects, kube_namespace, "dry-change")
    changed = raycluster("dry-change")
    changed["spec"]["workerGroupSpecs"][0]["replicas"] = 5

    returned = apply(custom_objects, kube_namespace, changed, dry_run="All")

    after = get(custom_objects, kube_namespace, "dry-change")
    assert returned["spec"]["workerGroupSpecs"][0]["replicas"] == 5
    assert after["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_second_field_manager_conflicts_until_it_forces_the_takeover(
    custom_objects: client.CustomObjectsApi, kube_namespace: str
) -> None:
    apply(custom_objects, kube_namespace, raycluster("contested", rayVersion="2.60.0"))
    takeover = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayCluster",
        "metadata": {"name": "contested"},
        "spec": {"rayVersion": "2.59.0"},
    }

    with pytest.raises(ApiException) as raised:
        apply(custom_objects, kube_namespace, takeover, manager=OTHER_MANAGER)
    assert raised.value.status == 409
    assert f'conflict with "{MANAGER}"' in error_message(raised.value)
    assert ".spec.rayVersion" in error_message(raised.value)

    forced = apply(custom_objects, kube_namespace, takeover, manager=OTHER_MANAGER, force=True)

    assert forced["spec"]["rayVersion"] == "2.59.0"
    owners = {
        entry["manager"]
        for entry in forced["metadata"]["managedFields"]
        if "f:rayVersion" in entry.get("fieldsV1", {}).get("f:spec", {})
    }
    assert owners == {OTHER_MANAGER}
