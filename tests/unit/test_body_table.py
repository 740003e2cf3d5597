"""The Kubernetes target's apply body, as tables: what is sent for a RayCluster, RayJob or RayService given
Git's object and the live one (a RayJob's run id and live spec, the autoscaler's fields, `ignore` pointers),
and the small rules around it (fingerprint, as_applied, conflicts on worker groups, force)."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from reconciler.model import APPLIED_ANNOTATION, REVISION_ANNOTATION, DesiredObject, ObjectRef, job_submission_id
from reconciler.targets.kubernetes.body import (
    apply_body,
    as_applied,
    carries_live_scale,
    fingerprint,
    forced,
    keep_live,
    only_worker_groups,
    same_run,
    without_precondition,
    worker_group_fields,
)

ENV = "prod"
MANAGER = "ray-gitops"


def group(name: str, replicas: int, **more: Any) -> dict[str, Any]:
    return {"groupName": name, "replicas": replicas, "minReplicas": 0, "maxReplicas": 8,
            "template": {"spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0"}]}}, **more}


def cluster_spec(*groups: dict[str, Any], autoscaling: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"headGroupSpec": {"rayStartParams": {},
                                              "template": {"spec": {"containers": [{"name": "ray-head"}]}}},
                            "workerGroupSpecs": list(groups)}
    if autoscaling:
        spec["enableInTreeAutoscaling"] = True
    return spec


def raycluster(*groups: dict[str, Any], autoscaling: bool = False, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo", **meta},
            "spec": cluster_spec(*groups, autoscaling=autoscaling)}


def rayjob(entrypoint: str = "python train.py", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "train"},
            "spec": {"entrypoint": entrypoint, "rayClusterSpec": cluster_spec(group("cpu", 1)), **spec}}


def rayservice(*groups: dict[str, Any], autoscaling: bool = False) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "serve"},
            "spec": {"serveConfigV2": "applications: []", "rayClusterConfig": cluster_spec(*groups,
                                                                                          autoscaling=autoscaling)}}


def desired(manifest: dict[str, Any]) -> DesiredObject:
    ref = ObjectRef("ray.io", manifest["kind"], "ray-prod", manifest["metadata"]["name"])
    return DesiredObject(ref, manifest, f"environments/{ENV}/objects.yaml", 0)


def live(manifest: dict[str, Any], version: str = "41", **spec_changes: Any) -> dict[str, Any]:
    """`manifest` as stored: a resourceVersion, and whatever others changed in its spec."""
    stored = copy.deepcopy(manifest)
    stored["metadata"]["resourceVersion"] = version
    stored["spec"].update(spec_changes)
    return stored


def without_mark(body: dict[str, Any]) -> dict[str, Any]:
    """`body` less the fingerprint annotation (and the annotations map, if that was all it held)."""
    out = copy.deepcopy(body)
    annotations = out["metadata"]["annotations"]
    del annotations[APPLIED_ANNOTATION]
    if not annotations:
        del out["metadata"]["annotations"]
    return out


def test_a_new_raycluster_is_sent_as_git_has_it_with_its_fingerprint() -> None:
    git = raycluster(group("cpu", 2), annotations={REVISION_ANNOTATION: "abc123"})
    body = apply_body(ENV, desired(git), None)
    assert without_mark(body) == git
    assert body["metadata"]["annotations"][APPLIED_ANNOTATION] == fingerprint(git, (), "")
    assert git["metadata"]["annotations"] == {REVISION_ANNOTATION: "abc123"}  # Git's object is not changed


@pytest.mark.parametrize(("live_job", "expected_spec"), [
    pytest.param(None, "git", id="created: Git's spec and the run id"),
    pytest.param("same run, spelled by KubeRay", "live",
                 id="same run: the live spec (KubeRay wrote it back), only suspend from Git"),
    pytest.param("older run", "git", id="another run: Git's spec and the new run id"),
])
def test_a_rayjob_carries_its_run_id_and_keeps_the_live_spec_of_the_same_run(live_job: str | None,
                                                                            expected_spec: str) -> None:
    git = rayjob(suspend=False)
    run = job_submission_id(ENV, "train", git)
    stored = None
    if live_job == "same run, spelled by KubeRay":  # its finalizer update spells empty fields out
        stored = live(git, jobId=run, suspend=True)
        stored["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["scaleStrategy"] = {}
    elif live_job == "older run":
        stored = live(rayjob("python old.py"), jobId=job_submission_id(ENV, "train", rayjob("python old.py")))
    body = apply_body(ENV, desired(git), stored)
    assert body["spec"]["jobId"] == run == f"prod-train-{run.rsplit('-', 1)[1]}"
    if expected_spec == "live":
        assert stored is not None
        assert body["spec"] == {**stored["spec"], "suspend": False}
    else:
        assert body["spec"] == {**git["spec"], "jobId": run}
    assert "jobId" not in git["spec"]


@pytest.mark.parametrize(("make", "path"), [
    pytest.param(raycluster, ("spec",), id="RayCluster"),
    pytest.param(rayservice, ("spec", "rayClusterConfig"), id="RayService"),
])
def test_with_in_tree_autoscaling_an_existing_objects_groups_carry_the_live_replicas(make: Any,
                                                                                    path: tuple[str, ...]) -> None:
    """The autoscaler owns `replicas` and `scaleStrategy`: the body carries the live values (never Git's), a group
    new in Git starts from Git's, and the body holds only for that live version (resourceVersion)."""
    git = make(group("cpu", 1), group("gpu", 0), autoscaling=True)
    stored = make(group("cpu", 5, scaleStrategy={"workersToDelete": ["cpu-x1"]}), autoscaling=True)
    stored["metadata"]["resourceVersion"] = "77"
    before = copy.deepcopy(git)
    body = apply_body(ENV, desired(git), stored)
    assert git == before  # Git's object is not changed
    spec = body
    for key in path:
        spec = spec[key]
    assert [(g["groupName"], g["replicas"], g.get("scaleStrategy")) for g in spec["workerGroupSpecs"]] == [
        ("cpu", 5, {"workersToDelete": ["cpu-x1"]}), ("gpu", 0, None)]
    assert body["metadata"]["resourceVersion"] == "77"


@pytest.mark.parametrize(("autoscaling", "stored", "expected"), [
    pytest.param(False, raycluster(group("cpu", 5)), False, id="no autoscaling: Git's replicas"),
    pytest.param(True, None, False, id="created: nothing live to carry"),
    pytest.param(True, raycluster(group("cpu", 5)), True, id="autoscaling and live"),
    pytest.param(True, {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo"}}, False,
                 id="live without a spec"),
])
def test_carries_live_scale(autoscaling: bool, stored: dict[str, Any] | None, expected: bool) -> None:
    assert carries_live_scale(desired(raycluster(group("cpu", 1), autoscaling=autoscaling)), stored) is expected


def test_an_ignored_field_keeps_its_live_value_in_the_body_of_an_existing_object() -> None:
    git = raycluster(group("cpu", 1), labels={"team": "ml"})
    stored = live(raycluster(group("cpu", 3), labels={"team": "ml", "cost-center": "42"}))
    ignore = ("/spec/workerGroupSpecs/*/replicas", "/metadata/labels/cost-center")
    before = copy.deepcopy(git)
    body = apply_body(ENV, desired(git), stored, ignore)
    assert git == before  # Git's object is not changed
    assert body["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert body["metadata"]["labels"] == {"team": "ml", "cost-center": "42"}
    assert apply_body(ENV, desired(git), None, ignore)["spec"]["workerGroupSpecs"][0]["replicas"] == 1  # created


@pytest.mark.parametrize(("body", "stored", "pointer", "expected"), [
    pytest.param({"metadata": {"labels": {"a": "git"}}}, {"metadata": {"labels": {"a": "live"}}},
                 "/metadata/labels/a", {"metadata": {"labels": {"a": "live"}}}, id="a key: the live value"),
    pytest.param({"metadata": {"labels": {"a": "git"}}}, {"metadata": {"labels": {}}},
                 "/metadata/labels/a", {"metadata": {"labels": {}}}, id="absent live: left out of the body"),
    pytest.param({"metadata": {"labels": {}}}, {"metadata": {"labels": {"a": "live"}}},
                 "/metadata/labels/a", {"metadata": {"labels": {"a": "live"}}}, id="absent in Git: the live value"),
    pytest.param({"spec": {"workerGroupSpecs": [{"replicas": 1}, {"replicas": 2}]}},
                 {"spec": {"workerGroupSpecs": [{"replicas": 7}, {"replicas": 8}]}},
                 "/spec/workerGroupSpecs/*/replicas",
                 {"spec": {"workerGroupSpecs": [{"replicas": 7}, {"replicas": 8}]}}, id="wildcard over a list"),
    pytest.param({"spec": {"workerGroupSpecs": [{"replicas": 1}, {"replicas": 2}]}},
                 {"spec": {"workerGroupSpecs": [{"replicas": 7}]}}, "/spec/workerGroupSpecs/1/replicas",
                 {"spec": {"workerGroupSpecs": [{"replicas": 1}, {"replicas": 2}]}},
                 id="an index live does not have: unchanged"),
    pytest.param({"metadata": {"annotations": {"example.com/owner": "git"}}},
                 {"metadata": {"annotations": {"example.com/owner": "live"}}},
                 "/metadata/annotations/example.com~1owner",
                 {"metadata": {"annotations": {"example.com/owner": "live"}}}, id="~1 is a slash"),
    pytest.param({"spec": {"suspend": False}}, {"spec": "not a map"}, "/spec/suspend", {"spec": {"suspend": False}},
                 id="types differ: unchanged"),
    pytest.param({"spec": {"x": 1}}, {"spec": {"x": 2}}, "/", {"spec": {"x": 1}}, id="the root: unchanged"),
])
def test_keep_live(body: dict[str, Any], stored: dict[str, Any], pointer: str, expected: dict[str, Any]) -> None:
    keep_live(body, stored, pointer)
    assert body == expected


@pytest.mark.parametrize(("a", "b", "equal"), [
    pytest.param((raycluster(group("cpu", 1)), (), ""),
                 (raycluster(group("cpu", 1), annotations={REVISION_ANNOTATION: "def456"}), (), ""), True,
                 id="the revision annotation does not count"),
    pytest.param((raycluster(group("cpu", 1)), (), ""),
                 (raycluster(group("cpu", 1), annotations={APPLIED_ANNOTATION: "old"}), (), ""), True,
                 id="a fingerprint does not count"),
    pytest.param((raycluster(group("cpu", 1)), (), ""), (raycluster(group("cpu", 2)), (), ""), False,
                 id="a spec change counts"),
    pytest.param((raycluster(group("cpu", 1)), (), ""),
                 (raycluster(group("cpu", 1), annotations={"team": "ml"}), (), ""), False,
                 id="another annotation counts"),
    pytest.param((raycluster(group("cpu", 1)), (), ""),
                 (raycluster(group("cpu", 1)), ("/spec/workerGroupSpecs/*/replicas",), ""), False,
                 id="the ignore pointers count"),
    pytest.param((rayjob(), (), "prod-train-aaaaaaaaaa"), (rayjob(), (), "prod-train-bbbbbbbbbb"), False,
                 id="the run id counts"),
])
def test_fingerprint(a: tuple[Any, ...], b: tuple[Any, ...], equal: bool) -> None:
    assert (fingerprint(*a) == fingerprint(*b)) is equal
    assert len(fingerprint(*a)) == 32


def _stored(mark: str, managers: list[dict[str, str]] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "demo", "annotations": {APPLIED_ANNOTATION: mark}}
    if managers is not None:
        meta["managedFields"] = managers
    return {"metadata": meta}


@pytest.mark.parametrize(("stored", "expected"), [
    pytest.param(_stored("m", [{"manager": MANAGER, "operation": "Apply"}]), True, id="ours alone"),
    pytest.param(_stored("m", [{"manager": MANAGER}, {"manager": "kuberay-operator", "subresource": "status"}]),
                 True, id="ours and the status subresource's"),
    pytest.param(_stored("m", [{"manager": MANAGER}, {"manager": "kubectl-edit", "operation": "Update"}]), False,
                 id="someone else wrote since"),
    pytest.param(_stored("other", [{"manager": MANAGER}]), False, id="another fingerprint"),
    pytest.param(_stored("m", None), False, id="no managedFields: cannot tell"),
])
def test_as_applied(stored: dict[str, Any], expected: bool) -> None:
    body = {"metadata": {"annotations": {APPLIED_ANNOTATION: "m"}}}
    assert as_applied(stored, body, MANAGER) is expected


@pytest.mark.parametrize(("stored", "expected"), [
    pytest.param(None, False, id="nothing live"),
    pytest.param({"spec": {"jobId": "prod-train-0123456789"}}, True, id="same run"),
    pytest.param({"spec": {"jobId": "prod-train-9876543210"}}, False, id="another run"),
    pytest.param({"spec": {}}, False, id="no jobId"),
    pytest.param({"metadata": {}}, False, id="no spec"),
])
def test_same_run(stored: dict[str, Any] | None, expected: bool) -> None:
    assert same_run(stored, "prod-train-0123456789") is expected


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"metadata": {"name": "demo", "resourceVersion": "7"}}, {"metadata": {"name": "demo"}},
                 id="precondition removed"),
    pytest.param({"metadata": {"name": "demo"}}, {"metadata": {"name": "demo"}}, id="none: unchanged"),
])
def test_without_precondition_leaves_the_body_itself_alone(body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert without_precondition(body) == expected
    assert body == before


@pytest.mark.parametrize(("kind", "expected"), [
    ("RayCluster", ".spec.workerGroupSpecs"),
    ("RayJob", ".spec.rayClusterSpec.workerGroupSpecs"),
    ("RayService", ".spec.rayClusterConfig.workerGroupSpecs"),
    ("RayCronJob", ".spec.jobTemplate.rayClusterSpec.workerGroupSpecs"),
])
def test_worker_group_fields(kind: str, expected: str) -> None:
    assert worker_group_fields(kind) == expected


@pytest.mark.parametrize(("kind", "fields", "expected"), [
    pytest.param("RayCluster", [".spec.workerGroupSpecs"], True, id="the list"),
    pytest.param("RayCluster", ['.spec.workerGroupSpecs[groupName="cpu"].replicas'], True, id="inside the list"),
    pytest.param("RayCluster", [".spec.workerGroupSpecs", ".spec.headGroupSpec"], False, id="and the head"),
    pytest.param("RayCluster", [".spec.workerGroupSpecsExtra"], False, id="a longer name is another field"),
    pytest.param("RayService", [".spec.rayClusterConfig.workerGroupSpecs"], True, id="RayService"),
    pytest.param("RayCluster", [], False, id="no conflict"),
    pytest.param("ConfigMap", [".data"], False, id="not a Ray kind"),
])
def test_only_worker_groups(kind: str, fields: list[str], expected: bool) -> None:
    assert only_worker_groups(kind, fields) is expected


@pytest.mark.parametrize(("self_heal", "environment_force", "annotation", "expected"), [
    pytest.param(True, False, None, True, id="selfHeal (the default)"),
    pytest.param(False, True, None, True, id="force: true on the environment"),
    pytest.param(False, False, "true", True, id="the object's annotation"),
    pytest.param(False, False, "True", True, id="the annotation in any case"),
    pytest.param(False, False, "yes", False, id="only true forces"),
    pytest.param(False, False, None, False, id="nothing asks"),
])
def test_forced(self_heal: bool, environment_force: bool, annotation: str | None, expected: bool) -> None:
    annotations = {} if annotation is None else {"gitops.ray.io/force": annotation}
    assert forced(self_heal, environment_force, desired(raycluster(annotations=annotations))) is expected
