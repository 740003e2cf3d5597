"""KubernetesTarget on the real API server: server-side apply, dry-run expected state, errors,
recreate/delete, RayJob submission ids, and an observe that reads watch caches, not the API."""
from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from target_kit import ENV, Kit, desired, load, managers

from reconciler.errors import PermanentError
from reconciler.model import (
    Action,
    EnvironmentSpec,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    TargetSpec,
    job_submission_id,
)
from reconciler.pipeline import diff, planner
from reconciler.targets.kubernetes.options import KubernetesOptions
from reconciler.targets.kubernetes.target import KubernetesTarget
from tests.eventually import eventually

pytestmark = pytest.mark.kube


@pytest.fixture
def kit(kube_control_plane, kube_namespace: str):
    k = Kit(kube_control_plane, kube_namespace)
    yield k
    k.close()


@pytest.mark.parametrize("name", ["raycluster.yaml", "configmap.yaml", "secret.yaml"])
def test_create_is_a_server_side_apply_by_ray_gitops_without_last_applied_annotation(kit: Kit, name: str) -> None:
    obj = desired(load(name), kit.namespace)
    assert kit.observe(obj) == {}

    item, outcome = kit.sync(obj)

    assert (item.action, outcome) == (Action.CREATE, Outcome.CREATED)
    live = kit.get(obj.ref.kind, obj.ref.name)
    assert live is not None
    assert live["metadata"]["labels"] == obj.manifest["metadata"]["labels"]
    assert managers(live) == {"ray-gitops": "Apply"}
    assert "kubectl.kubernetes.io/last-applied-configuration" not in (live["metadata"].get("annotations") or {})
    assert (kit.requests("apply"), kit.requests("create"), kit.requests("update")) == (1, 0, 0)


def test_expected_state_makes_an_unchanged_object_noop_and_is_not_dry_run_again(kit: Kit) -> None:
    obj = desired(load("raycluster.yaml"), kit.namespace)
    kit.sync(obj)
    assert kit.plan(obj).action == Action.NOOP
    assert kit.requests("dryrun-apply") == 0  # the apply's answer is what a dry-run would have said

    kit.custom.patch_namespaced_custom_object(  # someone else's change: a new resourceVersion to dry-run against
        "ray.io", "v1", kit.namespace, "rayclusters", "demo", {"metadata": {"annotations": {"note": "x"}}},
        _content_type="application/merge-patch+json")
    kit.caught_up(obj)
    live = kit.observe(obj)[obj.ref]
    group = live.manifest["spec"]["workerGroupSpecs"][0]
    assert group["numOfHosts"] == 1  # a CRD default Git never wrote: comparing with Git alone is drift
    assert "spec.workerGroupSpecs[cpu].numOfHosts" in diff.changed_paths(diff.normalize(live.manifest),
                                                                         diff.normalize(obj.manifest))
    # custom resources keep the quantity as written (only built-in kinds canonicalise 1000m to 1)
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "1000m"
    env = kit.environment(obj)

    expected = kit.target.expected(env, {obj.ref: live})

    assert kit.requests("dryrun-apply") == 1
    assert diff.normalize(expected[obj.ref]) == diff.normalize(live.manifest)
    [item] = planner.plan(env, {obj.ref: live}, frozenset(), {}, expected=expected)
    assert item.action == Action.NOOP
    for _ in range(3):
        assert kit.target.expected(env, kit.observe(obj)) == expected
    assert kit.requests("dryrun-apply") == 1  # same body, same live resourceVersion: cached


def test_an_update_over_another_managers_fields_is_kept_and_not_dry_run_again(kit: Kit) -> None:
    """Once another manager has written the object, its fingerprint cannot vouch for it: the apply's answer
    is kept as the dry-run of its body, so the next plan sends no dry-run either."""
    obj = desired(load("raycluster.yaml"), kit.namespace)
    kit.sync(obj)
    kit.custom.patch_namespaced_custom_object(
        "ray.io", "v1", kit.namespace, "rayclusters", "demo", {"metadata": {"annotations": {"note": "x"}}},
        _content_type="application/merge-patch+json")
    kit.caught_up(obj)
    changed = desired(load("raycluster.yaml"), kit.namespace)
    changed.manifest["metadata"]["labels"]["team"] = "research"
    item, outcome = kit.sync(changed)
    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED)
    assert kit.requests("dryrun-apply") == 1  # the plan's: the live object is not only ours
    kit.caught_up(changed)

    assert kit.plan(changed).action == Action.NOOP
    assert kit.requests("dryrun-apply") == 1  # the apply's answer stood in for it


def test_secret_changes_show_in_plans_but_their_values_never_do(kit: Kit) -> None:
    obj = desired(load("secret.yaml"), kit.namespace)
    kit.sync(obj)
    assert kit.plan(obj).action == Action.NOOP  # stringData in Git, data on the server: compared alike

    leaked = base64.b64encode(b"changed-by-hand").decode()
    kit.core.patch_namespaced_secret("credentials", kit.namespace, {"data": {"token": leaked}})
    kit.caught_up(obj)
    item = kit.plan(obj)

    assert item.action == Action.UPDATE and "data.token" in item.reason
    live = kit.observe(obj)[obj.ref].manifest
    for value in ("changed-by-hand", leaked, "s3cr3t-from-git", base64.b64encode(b"s3cr3t-from-git").decode()):
        assert value not in item.diff and value not in str(live)


@pytest.mark.parametrize("name", ["configmap.yaml", "secret.yaml", "raycluster.yaml"])
def test_objects_a_new_target_lists_keep_their_kind_so_unchanged_ones_are_noop_and_secrets_stay_hidden(
        kit: Kit, kube_control_plane, name: str) -> None:
    """A LIST answers built-in kinds without `apiVersion`/`kind` on each item; the caches of a new daemon, or
    of one whose watch had to list again (an API server restart), start from such a LIST."""
    obj = desired(load(name), kit.namespace)
    kit.sync(obj)
    fresh = Kit(kube_control_plane, kit.namespace)
    try:
        live = fresh.observe(obj)[obj.ref].manifest
        item = fresh.plan(obj)
    finally:
        fresh.close()

    assert (live["apiVersion"], live["kind"]) == (obj.manifest["apiVersion"], obj.manifest["kind"])
    assert item.action == Action.NOOP, item.reason
    for value in ("s3cr3t-from-git", base64.b64encode(b"s3cr3t-from-git").decode()):
        assert value not in str(live)


def _drop_head(doc: dict[str, Any]) -> None:
    del doc["spec"]["headGroupSpec"]


@pytest.mark.parametrize("break_it, field", [
    pytest.param(_drop_head, "spec.headGroupSpec: Required value", id="missing-required-field"),
    pytest.param(lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="three"),
                 ".spec.workerGroupSpecs[0].replicas: expected numeric", id="string-for-integer"),
    pytest.param(lambda d: d["spec"].update(autoscalerOptions={"upscalingMode": "Fast"}),
                 "spec.autoscalerOptions.upscalingMode", id="value-outside-enum"),
    pytest.param(lambda d: d["metadata"]["labels"].update(team="not valid!"), "metadata.labels", id="invalid-label"),
])
def test_object_the_server_rejects_is_a_permanent_error_naming_the_field_and_the_git_file(
        kit: Kit, break_it: Callable[[dict[str, Any]], None], field: str) -> None:
    doc = load("raycluster.yaml")
    break_it(doc)
    obj = desired(doc, kit.namespace, document=2)

    with pytest.raises(PermanentError) as raised:
        kit.apply(obj, Action.CREATE)

    message = str(raised.value)
    assert message.startswith(f"RayCluster/{kit.namespace}/demo: {obj.file}#2: rejected by the API server: ")
    assert field in message
    assert kit.get("RayCluster", "demo") is None


def test_recreate_replaces_the_object_and_delete_removes_it(kit: Kit) -> None:
    obj = desired(load("raycluster.yaml"), kit.namespace)
    kit.apply(obj, Action.CREATE)
    first = kit.get("RayCluster", "demo")
    assert first is not None and kit.observe(obj)

    assert kit.apply(obj, Action.RECREATE) == Outcome.RECREATED

    second = kit.get("RayCluster", "demo")
    assert second is not None and second["metadata"]["uid"] != first["metadata"]["uid"]
    assert kit.observe(obj)[obj.ref].manifest["metadata"]["uid"] == second["metadata"]["uid"]

    assert kit.apply(None, Action.DELETE, obj.ref) == Outcome.DELETED
    assert kit.get("RayCluster", "demo") is None
    assert kit.observe(obj) == {}  # the next observe sees our delete
    assert kit.apply(None, Action.DELETE, obj.ref) == Outcome.DELETED  # already gone is fine


def test_rayjob_submit_sets_job_id_to_the_submission_id_which_is_not_drift(kit: Kit) -> None:
    obj = desired(load("rayjob.yaml"), kit.namespace)

    item, outcome = kit.sync(obj)

    assert (item.action, outcome) == (Action.SUBMIT, Outcome.SUBMITTED)
    live = kit.get("RayJob", "count")
    assert live is not None
    assert live["spec"]["jobId"] == job_submission_id(ENV, "count", obj.manifest)
    assert "jobId" not in obj.manifest["spec"]
    assert kit.plan(obj).action == Action.NOOP


def test_steady_state_observe_reads_watch_caches_and_sends_no_list_or_get(kit: Kit) -> None:
    cluster, settings = desired(load("raycluster.yaml"), kit.namespace), desired(load("configmap.yaml"), kit.namespace)
    kit.apply(cluster, Action.CREATE)
    kit.apply(settings, Action.CREATE)
    assert set(kit.observe(cluster, settings)) == {cluster.ref, settings.ref}
    assert kit.requests("list") == 3  # RayClusters, ConfigMaps, worker Pods of the namespace
    lists, gets = kit.requests("list"), kit.requests("get")

    for _ in range(20):
        assert set(kit.observe(cluster, settings)) == {cluster.ref, settings.ref}
    kit.custom.patch_namespaced_custom_object(
        "ray.io", "v1", kit.namespace, "rayclusters", "demo", {"metadata": {"labels": {"seen": "yes"}}},
        _content_type="application/merge-patch+json")
    eventually(lambda: kit.observe(cluster, settings)[cluster.ref].labels.get("seen") == "yes", 10, 0.05,
               "the label set by someone else in the cache")

    assert (kit.requests("list"), kit.requests("get")) == (lists, gets)
    assert kit.requests("watch") >= 3


def _pod(name: str, group: str, node_type: str) -> dict[str, Any]:
    labels = {"ray.io/cluster": "demo", "ray.io/group": group, "ray.io/node-type": node_type}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "ray", "image": "rayproject/ray:2.60.0"}]}}


def test_ready_workers_per_group_come_from_the_worker_pods_cache(kit: Kit) -> None:
    cluster = desired(load("raycluster.yaml"), kit.namespace)
    kit.apply(cluster, Action.CREATE)
    assert kit.observe(cluster)[cluster.ref].workers == {"cpu": 0}
    lists = kit.requests("list")

    for name, group, node_type, ready in [("w1", "cpu", "worker", True), ("w2", "cpu", "worker", True),
                                          ("w3", "cpu", "worker", False), ("head", "headgroup", "head", True)]:
        kit.core.create_namespaced_pod(kit.namespace, _pod(name, group, node_type))
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        kit.core.patch_namespaced_pod_status(name, kit.namespace, {"status": {"conditions": [condition]}})

    def two_ready_workers() -> bool:
        workers = kit.observe(cluster)[cluster.ref].workers
        assert workers == {"cpu": 2}, workers
        return True
    eventually(two_ready_workers, 10, 0.05, "the ready worker Pods in the cache")
    assert kit.requests("list") == lists


def test_watch_lists_again_when_its_resource_version_has_expired(kit: Kit) -> None:
    cluster = desired(load("raycluster.yaml"), kit.namespace)
    kit.observe(cluster)
    informer = kit.target._informers[("RayCluster", "")]  # one cluster-wide watch per kind
    lists = kit.requests("list")

    informer.restart_from("1")  # as after a long disconnection: the server no longer has that history

    eventually(lambda: kit.requests("list") == lists + 1, 10, 0.05, "the watch to list again")
    kit.apply(cluster, Action.CREATE)
    assert cluster.ref in kit.observe(cluster)


def _namespaces(kit: Kit, count: int) -> list[str]:
    names = [f"{kit.namespace}-{i}" for i in range(count)]
    for name in names:
        kit.core.create_namespace({"metadata": {"name": name}})
    return names


def _watch_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("watch "))


def test_watches_grow_with_kinds_not_namespaces(kit: Kit) -> None:
    namespaces = _namespaces(kit, 6)
    try:
        for ns in namespaces:
            env = EnvironmentSpec(f"e-{ns[-1]}", TargetSpec("kubernetes", KubernetesOptions(ns)))
            objects = [desired(load("raycluster.yaml"), ns), desired(load("configmap.yaml"), ns)]
            for obj in objects:
                kit.apply(obj, Action.CREATE)
            live = kit.target.observe(RenderedEnvironment(env, tuple(objects)), {o.ref for o in objects},
                                      frozenset()).live
            assert set(live) == {o.ref for o in objects}
            assert live[objects[0].ref].manifest["metadata"]["namespace"] == ns

        assert set(kit.target._informers) == {("RayCluster", ""), ("ConfigMap", ""), ("Pod", "")}
        assert _watch_threads() == ["watch /api/v1/configmaps", "watch /api/v1/pods",
                                    "watch /apis/ray.io/v1/rayclusters"]
        assert kit.requests("list") == 3
    finally:
        for ns in namespaces:
            kit.core.delete_namespace(ns)


def test_without_cluster_wide_list_rights_each_namespace_gets_its_own_watch(kit: Kit, kube_control_plane) -> None:
    """A daemon bound by RoleBindings in some namespaces only (no ClusterRole) still works, per namespace."""
    namespaces = _namespaces(kit, 2)
    rbac = client.RbacAuthorizationV1Api(kit.api_client)
    kit.core.create_namespaced_service_account(kit.namespace, {"metadata": {"name": "limited"}})
    rules = [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
              "verbs": ["get", "list", "watch", "patch", "create"]},
             {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "patch"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    user = f"system:serviceaccount:{kit.namespace}:limited"
    for ns in namespaces:
        rbac.create_namespaced_role(ns, {"metadata": {"name": "limited"}, "rules": rules})
        rbac.create_namespaced_role_binding(ns, {
            "metadata": {"name": "limited"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                          "name": "limited"},
            "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": kit.namespace}]})
    limited_client = kube_control_plane.api_client()
    limited_client.set_default_header("Impersonate-User", user)
    target = KubernetesTarget(KubernetesOptions(namespaces[0]), kit.metrics, api_client=limited_client)
    try:
        for ns in namespaces:
            cluster = desired(load("raycluster.yaml"), ns)
            env = RenderedEnvironment(EnvironmentSpec(f"e-{ns[-1]}", TargetSpec("kubernetes", KubernetesOptions(ns))),
                                      (cluster,))
            assert target.observe(env, {cluster.ref}, frozenset()).live == {}
            target.apply(PlanItem(cluster.ref, Action.CREATE, "test", cluster), kit.context)
            assert set(target.observe(env, {cluster.ref}, frozenset()).live) == {cluster.ref}

        assert set(target._informers) == {(kind, ns) for kind in ("RayCluster", "Pod") for ns in namespaces}
    finally:
        target.close(workloads=True)
        limited_client.close()
        for ns in namespaces:
            kit.core.delete_namespace(ns)
