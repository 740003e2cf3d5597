"""Field ownership on the real API server: never fight the Ray autoscaler; heal a field another manager
changed (selfHeal, the default) or, with selfHeal off, never clobber it unless forced. KubeRay's
`workerGroupSpecs` is an atomic list for server-side apply."""
from __future__ import annotations

import copy
from typing import Any

import pytest
from target_kit import Kit, desired, load, managers, worker

from reconciler.errors import PermanentError
from reconciler.kuberay import cluster_spec
from reconciler.model import Action, Outcome

pytestmark = pytest.mark.kube
AUTOSCALER = "ray-autoscaler"  # a non-apply manager, as the Ray autoscaler's JSON patches are


@pytest.fixture
def kit(kube_control_plane, kube_namespace: str):
    k = Kit(kube_control_plane, kube_namespace)
    yield k
    k.close()


def autoscaled(name: str) -> dict[str, Any]:
    doc = load(name)
    cluster_spec(doc)["enableInTreeAutoscaling"] = True
    return doc


def scale(base: str, replicas: int, delete: list[str]) -> list[dict[str, Any]]:
    """The autoscaler's JSON patch of worker group 0."""
    return [{"op": "replace", "path": f"{base}/workerGroupSpecs/0/replicas", "value": replicas},
            {"op": "replace", "path": f"{base}/workerGroupSpecs/0/scaleStrategy", "value": {"workersToDelete": delete}}]


def test_omitting_replicas_from_the_atomic_worker_group_list_would_reset_them(kit: Kit) -> None:
    """Why apply bodies carry the live replicas: the list is one field, so leaving replicas out of it
    sets a list without them and the CRD default (0) comes back."""
    kit.apply(desired(load("raycluster.yaml"), kit.namespace), Action.CREATE)
    live = kit.get("RayCluster", "demo")
    assert live is not None
    [entry] = [e for e in live["metadata"]["managedFields"] if e["manager"] == "ray-gitops"]
    assert entry["fieldsV1"]["f:spec"]["f:workerGroupSpecs"] == {}  # owned as a whole, no per-group fields

    body = load("raycluster.yaml")
    del body["spec"]["workerGroupSpecs"][0]["replicas"]
    kit.server_side_apply(body, "ray-gitops")

    assert kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]["replicas"] == 0


def test_autoscaler_replicas_survive_reconcile_and_git_changes(kit: Kit) -> None:
    doc = autoscaled("raycluster.yaml")
    obj = desired(doc, kit.namespace)
    assert kit.sync(obj)[1] == Outcome.CREATED

    kit.json_patch("RayCluster", "demo", scale("/spec", 3, ["pod-x"]), AUTOSCALER)
    live = kit.get("RayCluster", "demo")
    assert managers(live, "workerGroupSpecs") == {AUTOSCALER: "Update"}  # it took the whole list

    kit.caught_up(obj)
    assert kit.plan(obj).action == Action.NOOP
    assert kit.apply(obj, Action.UPDATE) == Outcome.CONFIGURED  # applying Git again changes nothing of it
    group = kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]
    assert worker(group) == {"replicas": 3, "minReplicas": 0, "maxReplicas": 4,
                             "scaleStrategy": {"workersToDelete": ["pod-x"]}}

    doc["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 6
    changed = desired(doc, kit.namespace, revision="r2")
    item, outcome = kit.sync(changed)

    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED), item.reason
    group = kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]
    assert worker(group) == {"replicas": 3, "minReplicas": 0, "maxReplicas": 6,
                             "scaleStrategy": {"workersToDelete": ["pod-x"]}}
    assert kit.conflicts("RayCluster") == 0

    kit.json_patch("RayCluster", "demo", scale("/spec", 2, []), AUTOSCALER)  # it goes on scaling
    kit.caught_up(changed)
    assert kit.plan(changed).action == Action.NOOP
    group = kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["scaleStrategy"]) == (2, {"workersToDelete": []})


def test_a_stale_cache_never_reverts_a_newer_autoscaler_decision(kit: Kit) -> None:
    obj = desired(autoscaled("raycluster.yaml"), kit.namespace)
    kit.sync(obj)
    kit.json_patch("RayCluster", "demo", scale("/spec", 3, []), AUTOSCALER)
    stale = kit.get("RayCluster", "demo")
    kit.json_patch("RayCluster", "demo", scale("/spec", 4, []), AUTOSCALER)  # after our read

    kit.target.applier.apply("t", obj, stale, force=False)  # the body carries 3, guarded by the old version

    assert kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]["replicas"] == 4


def test_autoscaler_fields_inside_a_rayjob_cluster_spec_are_kept(kit: Kit) -> None:
    doc = autoscaled("rayjob.yaml")
    obj = desired(doc, kit.namespace)
    assert kit.sync(obj)[1] == Outcome.SUBMITTED
    job_id = kit.get("RayJob", "count")["spec"]["jobId"]

    kit.json_patch("RayJob", "count", scale("/spec/rayClusterSpec", 3, ["pod-x"]), AUTOSCALER)
    kit.caught_up(obj)
    assert kit.plan(obj).action == Action.NOOP

    doc["metadata"]["labels"] = {"team": "ml"}
    item, outcome = kit.sync(desired(doc, kit.namespace, revision="r2"))

    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED), item.reason
    live = kit.get("RayJob", "count")
    assert live["metadata"]["labels"]["team"] == "ml" and live["spec"]["jobId"] == job_id
    group = live["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["scaleStrategy"]) == (3, {"workersToDelete": ["pod-x"]})


def test_without_autoscaling_a_foreign_replicas_patch_is_healed_taking_the_field_back(kit: Kit) -> None:
    """Git owns replicas here; an Update by another manager (`kubectl scale`, `kubectl edit`) takes the atomic
    list from us. By default the next apply sets Git's value back and takes the list back."""
    doc = load("raycluster.yaml")
    obj = desired(doc, kit.namespace)
    kit.sync(obj)
    kit.json_patch("RayCluster", "demo", [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}],
                   "kubectl-scale")
    assert managers(kit.get("RayCluster", "demo"), "workerGroupSpecs") == {"kubectl-scale": "Update"}

    kit.caught_up(obj)
    item, outcome = kit.sync(obj)

    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED)
    assert item.changes == ("spec.workerGroupSpecs[cpu].replicas",)
    live = kit.get("RayCluster", "demo")
    assert live["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    assert managers(live, "workerGroupSpecs") == {"ray-gitops": "Apply"}
    assert kit.conflicts("RayCluster") == 0


def test_with_self_heal_off_a_foreign_replicas_patch_conflicts_until_forced(
        kube_control_plane, kube_namespace: str) -> None:
    """`selfHeal: false`: restoring Git's value is a conflict like any other: reported, not clobbered, until
    forced."""
    kit = Kit(kube_control_plane, kube_namespace, self_heal=False)
    try:
        doc = load("raycluster.yaml")
        obj = desired(doc, kit.namespace)
        kit.sync(obj)
        kit.json_patch("RayCluster", "demo", [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas",
                                               "value": 3}], "kubectl-scale")

        kit.caught_up(obj)
        item = kit.plan(obj)
        assert item.action == Action.UPDATE and "spec.workerGroupSpecs[cpu].replicas" in item.reason
        with pytest.raises(PermanentError) as raised:
            kit.target.apply(item, kit.context)

        message = str(raised.value)
        assert message.startswith(f"RayCluster/{kit.namespace}/demo: apply conflict: .spec.workerGroupSpecs owned by "
                                  "field manager(s) kubectl-scale")
        assert kit.conflicts("RayCluster") == 1
        assert kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]["replicas"] == 3

        doc["metadata"]["annotations"] = {"gitops.ray.io/force": "true"}
        item, outcome = kit.sync(desired(doc, kit.namespace))

        assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED)
        live = kit.get("RayCluster", "demo")
        assert live["spec"]["workerGroupSpecs"][0]["replicas"] == 1
        assert managers(live, "workerGroupSpecs") == {"ray-gitops": "Apply"}
    finally:
        kit.close()


@pytest.mark.parametrize("force_by", ["environment", "annotation"])
def test_with_self_heal_off_a_field_another_manager_applied_is_not_clobbered_unless_forced(
        kube_control_plane, kube_namespace: str, force_by: str) -> None:
    kit = Kit(kube_control_plane, kube_namespace, self_heal=False)
    try:
        doc = load("raycluster.yaml")
        obj = desired(doc, kube_namespace)
        kit.sync(obj)
        takeover = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo"},
                    "spec": {"rayVersion": "2.59.0"}}
        kit.server_side_apply(takeover, "platform-team", force=True)

        kit.caught_up(obj)
        item = kit.plan(obj)
        assert item.action == Action.UPDATE  # Git says 2.60.0
        with pytest.raises(PermanentError) as raised:
            kit.target.apply(item, kit.context)

        assert str(raised.value).startswith(f"RayCluster/{kube_namespace}/demo: apply conflict: .spec.rayVersion "
                                            "owned by field manager(s) platform-team")
        assert kit.conflicts("RayCluster") == 1
        assert kit.get("RayCluster", "demo")["spec"]["rayVersion"] == "2.59.0"
    finally:
        kit.close()

    kit = Kit(kube_control_plane, kube_namespace, self_heal=False,
              **({"force": True} if force_by == "environment" else {}))
    try:
        if force_by == "annotation":
            doc["metadata"]["annotations"] = {"gitops.ray.io/force": "true"}
        item, outcome = kit.sync(desired(doc, kube_namespace))

        assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED)
        live = kit.get("RayCluster", "demo")
        assert live["spec"]["rayVersion"] == "2.60.0"
        assert managers(live, "rayVersion") == {"ray-gitops": "Apply"}
        assert kit.conflicts("RayCluster") == 0
    finally:
        kit.close()


def test_what_is_not_healed_an_ignored_field_and_objects_left_alone(kube_control_plane, kube_namespace: str) -> None:
    """The exceptions to healing, on the real API server: a field under the environment's `ignore` pointers keeps
    its hand-edited value even when another change is applied (its live value is sent back); an object annotated
    `gitops.ray.io/reconcile: disabled` by hand, or created with `gitops.ray.io/ssa: IfNotPresent`, is left as
    it is."""
    kit = Kit(kube_control_plane, kube_namespace, ignore=("/spec/workerGroupSpecs/*/replicas",))
    try:
        doc = load("raycluster.yaml")
        kit.sync(desired(doc, kube_namespace))
        kit.json_patch("RayCluster", "demo", [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas",
                                               "value": 3}], "kubectl-scale")
        changed = copy.deepcopy(doc)
        changed["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 6
        obj = desired(changed, kube_namespace)
        kit.caught_up(obj)
        item, outcome = kit.sync(obj)
        assert (item.action, item.changes, outcome) == (Action.UPDATE, ("spec.workerGroupSpecs[cpu].maxReplicas",),
                                                        Outcome.CONFIGURED)
        group = kit.get("RayCluster", "demo")["spec"]["workerGroupSpecs"][0]
        assert (group["replicas"], group["maxReplicas"]) == (3, 6), "the ignored field kept its hand-edited value"

        kit.custom.patch_namespaced_custom_object(
            "ray.io", "v1", kube_namespace, "rayclusters", "demo",
            {"metadata": {"annotations": {"gitops.ray.io/reconcile": "disabled"}}, "spec": {"rayVersion": "2.59.0"}},
            field_manager="kubectl-edit", _content_type="application/merge-patch+json")
        kit.caught_up(obj)
        item, outcome = kit.sync(obj)
        assert (item.action, outcome) == (Action.SKIP, None) and "left alone" in item.reason
        assert kit.get("RayCluster", "demo")["spec"]["rayVersion"] == "2.59.0"

        once = load("configmap.yaml")
        once["metadata"]["annotations"] = {"gitops.ray.io/ssa": "IfNotPresent"}
        created = desired(once, kube_namespace)
        assert kit.sync(created)[1] == Outcome.CREATED
        kit.core.patch_namespaced_config_map(once["metadata"]["name"], kube_namespace, {"data": {"edited": "yes"}},
                                             field_manager="kubectl-edit")
        kit.caught_up(created)
        item, outcome = kit.sync(created)
        assert (item.action, outcome) == (Action.NOOP, None)
        assert kit.get("ConfigMap", once["metadata"]["name"])["data"]["edited"] == "yes"
    finally:
        kit.close()
