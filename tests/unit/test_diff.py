"""Ray-aware diff: normalization, JSON-pointer removal, autoscaler-owned fields, named-list paths, text diff."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.kuberay import autoscaler_pointers
from reconciler.pipeline.diff import changed_paths, normalize, remove_pointer, strip, unified

TESTDATA = Path(__file__).parent.parent / "testdata" / "unit"


def fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((TESTDATA / name).read_text())


def test_normalize_drops_status_server_metadata_and_the_revision_annotation() -> None:
    live = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "settings", "namespace": "ray-prod", "uid": "6f1c", "resourceVersion": "4711",
            "generation": 3, "creationTimestamp": "2026-11-20T10:00:00Z",
            "managedFields": [{"manager": "ray-gitops", "operation": "Apply"}],
            "labels": {"app.kubernetes.io/managed-by": "ray-gitops"},
            "annotations": {"gitops.ray.io/revision": "0123abc", "owner": "ml-team"},
        },
        "data": {"LOG_LEVEL": "info"},
        "status": {"observedGeneration": 3},
    }
    original = copy.deepcopy(live)

    assert normalize(live) == {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "ray-prod",
                     "labels": {"app.kubernetes.io/managed-by": "ray-gitops"},
                     "annotations": {"owner": "ml-team"}},
        "data": {"LOG_LEVEL": "info"},
    }
    assert live == original, "normalize must not modify its input"


def test_normalize_removes_annotations_that_only_held_the_revision() -> None:
    manifest = {"kind": "ConfigMap", "metadata": {"name": "x", "annotations": {"gitops.ray.io/revision": "abc"}}}

    assert normalize(manifest) == {"kind": "ConfigMap", "metadata": {"name": "x"}}


def test_normalize_applies_extra_ignore_pointers() -> None:
    manifest = {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1", "b": "2"}}

    assert normalize(manifest, ["/data/b"]) == {"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "1"}}


GROUPS = {"groups": [{"name": "a", "replicas": 1}, {"name": "b", "replicas": 2}]}


@pytest.mark.parametrize("doc, pointer, expected", [
    pytest.param({"a": {"x": {"k": 1, "j": 2}, "y": {"k": 3}}}, "/a/*/k",
                 {"a": {"x": {"j": 2}, "y": {}}}, id="star-over-dict-values"),
    pytest.param(GROUPS, "/groups/*/replicas", {"groups": [{"name": "a"}, {"name": "b"}]}, id="star-over-list-items"),
    pytest.param(GROUPS, "/groups/1/replicas", {"groups": [{"name": "a", "replicas": 1}, {"name": "b"}]},
                 id="list-index"),
    pytest.param(GROUPS, "/groups/*", {"groups": []}, id="star-as-last-token-on-list"),
    pytest.param({"a": {"x": 1, "y": 2}}, "/a/*", {"a": {}}, id="star-as-last-token-on-dict"),
    pytest.param({"metadata": {"annotations": {"gitops.ray.io/revision": "abc", "keep": "me"}}},
                 "/metadata/annotations/gitops.ray.io~1revision", {"metadata": {"annotations": {"keep": "me"}}},
                 id="escaped-slash"),
    pytest.param({"a~b": 1, "a/b": 2}, "/a~0b", {"a/b": 2}, id="escaped-tilde"),
    pytest.param({"a~1": 1, "a/": 2}, "/a~01", {"a/": 2}, id="tilde-zero-one-is-literal-tilde-one"),
    pytest.param(GROUPS, "/groups/7/replicas", GROUPS, id="index-out-of-range-is-no-op"),
    pytest.param(GROUPS, "/nothing/here", GROUPS, id="missing-path-is-no-op"),
    pytest.param({"a": "scalar"}, "/a/b", {"a": "scalar"}, id="through-a-scalar-is-no-op"),
])
def test_remove_pointer_deletes_exactly_what_the_pointer_names(doc: Any, pointer: str, expected: Any) -> None:
    doc = copy.deepcopy(doc)

    remove_pointer(doc, pointer)

    assert doc == expected


def test_strip_leaves_its_input_untouched() -> None:
    doc = copy.deepcopy(GROUPS)

    assert strip(doc, ["/groups/*/replicas"]) == {"groups": [{"name": "a"}, {"name": "b"}]}
    assert doc == GROUPS


def with_autoscaling(kind_fixture: str, cluster_path: tuple[str, ...], value: Any) -> dict[str, Any]:
    doc = fixture(kind_fixture)
    node = doc
    for key in cluster_path:
        node = node[key]
    node["enableInTreeAutoscaling"] = value
    return doc


@pytest.mark.parametrize("manifest, expected", [
    pytest.param(with_autoscaling("raycluster.yaml", ("spec",), True),
                 ["/spec/workerGroupSpecs/*/replicas", "/spec/workerGroupSpecs/*/scaleStrategy"],
                 id="raycluster-enabled"),
    pytest.param(with_autoscaling("raycluster.yaml", ("spec",), False), [], id="raycluster-disabled"),
    pytest.param(fixture("raycluster.yaml"), [], id="raycluster-unset"),
    pytest.param(with_autoscaling("raycluster.yaml", ("spec",), "true"), [], id="raycluster-string-true-is-not-true"),
    pytest.param(with_autoscaling("rayjob.yaml", ("spec", "rayClusterSpec"), True),
                 ["/spec/rayClusterSpec/workerGroupSpecs/*/replicas",
                  "/spec/rayClusterSpec/workerGroupSpecs/*/scaleStrategy"], id="rayjob-cluster-spec-enabled"),
    pytest.param(with_autoscaling("rayjob.yaml", ("spec",), True), [], id="rayjob-flag-outside-cluster-spec"),
    pytest.param(with_autoscaling("rayservice.yaml", ("spec", "rayClusterConfig"), True),
                 ["/spec/rayClusterConfig/workerGroupSpecs/*/replicas",
                  "/spec/rayClusterConfig/workerGroupSpecs/*/scaleStrategy"], id="rayservice-cluster-config-enabled"),
    pytest.param(fixture("rayservice.yaml"), [], id="rayservice-unset"),
    pytest.param({**fixture("configmap.yaml"), "spec": {"enableInTreeAutoscaling": True}}, [], id="configmap"),
])
def test_autoscaler_owns_replicas_and_scale_strategy_only_when_enabled(
        manifest: dict[str, Any], expected: list[str]) -> None:
    assert sorted(autoscaler_pointers(manifest)) == sorted(expected)


def test_autoscaler_pointers_strip_every_group_of_a_rayjob_cluster() -> None:
    job = with_autoscaling("rayjob.yaml", ("spec", "rayClusterSpec"), True)
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"].append(
        {**job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0], "groupName": "big", "replicas": 5,
         "scaleStrategy": {"workersToDelete": ["train-big-worker-x"]}})

    groups = strip(job, autoscaler_pointers(job))["spec"]["rayClusterSpec"]["workerGroupSpecs"]

    assert [sorted(g) for g in groups] == [["groupName", "maxReplicas", "minReplicas", "template"]] * 2


def cluster(**group_edits: dict[str, Any]) -> dict[str, Any]:
    doc = fixture("raycluster.yaml")
    for group in doc["spec"]["workerGroupSpecs"]:
        group.update(group_edits.get(group["groupName"], {}))
    return doc


def reordered(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["workerGroupSpecs"].reverse()
    return doc


def with_image(doc: dict[str, Any], group: int, image: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["workerGroupSpecs"][group]["template"]["spec"]["containers"][0]["image"] = image
    return doc


def without_group(doc: dict[str, Any], name: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["workerGroupSpecs"] = [g for g in doc["spec"]["workerGroupSpecs"] if g["groupName"] != name]
    return doc


BASE = fixture("raycluster.yaml")


@pytest.mark.parametrize("old, new, expected", [
    pytest.param(BASE, copy.deepcopy(BASE), [], id="identical"),
    pytest.param(BASE, reordered(BASE), [], id="reordering-alone-is-no-change"),
    pytest.param(BASE, with_image(BASE, 1, "rayproject/ray:2.61.0-gpu"),
                 ["spec.workerGroupSpecs[gpu].template.spec.containers[ray-worker].image"], id="template-image"),
    pytest.param(BASE, reordered(cluster(cpu={"replicas": 3})), ["spec.workerGroupSpecs[cpu].replicas"],
                 id="reordered-and-scaled-is-matched-by-name"),
    pytest.param(BASE, without_group(BASE, "gpu"), ["spec.workerGroupSpecs[gpu]"], id="group-removed"),
    pytest.param(without_group(BASE, "gpu"), BASE, ["spec.workerGroupSpecs[gpu]"], id="group-added"),
    pytest.param(BASE, cluster(gpu={"idleTimeoutSeconds": 60}), ["spec.workerGroupSpecs[gpu].idleTimeoutSeconds"],
                 id="key-added"),
    pytest.param({"spec": {"args": ["a", "b"]}}, {"spec": {"args": ["a", "c"]}}, ["spec.args[1]"],
                 id="unnamed-list-same-length-by-index"),
    pytest.param({"spec": {"args": ["a"]}}, {"spec": {"args": ["a", "b"]}}, ["spec.args"],
                 id="unnamed-list-other-length-as-a-whole"),
    pytest.param({"data": {"k": "1"}}, {"data": {"k": 1}}, ["data.k"], id="type-change"),
])
def test_changed_paths_match_named_list_items_by_name(old: Any, new: Any, expected: list[str]) -> None:
    assert changed_paths(old, new) == expected


def test_unified_diff_shows_live_and_git_headers_and_the_changed_values() -> None:
    text = unified(BASE, cluster(cpu={"maxReplicas": 6}), "RayCluster/ray-prod/demo")

    lines = text.splitlines()
    assert lines[0] == "--- live/RayCluster/ray-prod/demo"
    assert lines[1] == "+++ git/RayCluster/ray-prod/demo"
    changes = [(line[0], line[1:].strip()) for line in lines[2:] if line.startswith(("+", "-"))]
    assert changes == [("-", "maxReplicas: 4"), ("+", "maxReplicas: 6")]


def test_unified_diff_of_a_new_object_only_adds_lines() -> None:
    text = unified(None, fixture("configmap.yaml"), "ConfigMap/ray-prod/settings")

    body = [line for line in text.splitlines()[2:] if not line.startswith("@@")]
    assert body and all(line.startswith("+") for line in body)
    assert "+  LOG_LEVEL: info" in body


def test_unified_diff_of_equal_objects_is_empty() -> None:
    assert unified(BASE, copy.deepcopy(BASE), "RayCluster/ray-prod/demo") == ""
