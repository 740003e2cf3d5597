"""The kind table of `reconciler.kuberay`: each kind's facts, and the helpers that read them."""
from __future__ import annotations

from typing import Any

import pytest

from reconciler import kuberay
from reconciler.kubeapi import RESOURCES, resource
from reconciler.kuberay import KINDS, Changes
from reconciler.model import CONCURRENCY_ANNOTATION, ObjectRef


@pytest.mark.parametrize(("name", "api_version", "plural", "order", "changes", "cluster_spec", "job_spec"), [
    pytest.param("ConfigMap", "v1", "configmaps", 0, Changes.APPLY, "", "", id="configmap"),
    pytest.param("Secret", "v1", "secrets", 0, Changes.APPLY, "", "", id="secret"),
    pytest.param("RayCluster", "ray.io/v1", "rayclusters", 1, Changes.IN_PLACE, "/spec", "", id="raycluster"),
    pytest.param("RayService", "ray.io/v1", "rayservices", 2, Changes.IN_PLACE, "/spec/rayClusterConfig", "",
                 id="rayservice"),
    pytest.param("RayJob", "ray.io/v1", "rayjobs", 3, Changes.RERUN, "/spec/rayClusterSpec", "/spec", id="rayjob"),
    pytest.param("RayCronJob", "ray.io/v1", "raycronjobs", 3, Changes.APPLY, "/spec/jobTemplate/rayClusterSpec",
                 "/spec/jobTemplate", id="raycronjob"),
])
def test_each_kind_has_its_facts(name: str, api_version: str, plural: str, order: int, changes: Changes,
                                 cluster_spec: str, job_spec: str) -> None:
    kind = KINDS[name]
    assert (kind.api_version, kind.plural, kind.order, kind.changes, kind.cluster_spec, kind.job_spec) == (
        api_version, plural, order, changes, cluster_spec, job_spec)
    group = api_version.rpartition("/")[0]
    prefix = f"/apis/{api_version}" if group else f"/api/{api_version}"
    assert resource(ObjectRef(group, name, "ns", "x")).item("ns", "x") == f"{prefix}/namespaces/ns/{plural}/x"


def test_the_table_holds_exactly_the_kinds_git_may_hold() -> None:
    assert kuberay.NAMES == {"RayCluster", "RayJob", "RayService", "RayCronJob", "ConfigMap", "Secret"}
    assert set(RESOURCES) == kuberay.NAMES | {"Pod"}  # Pods are read (health), never applied


def test_only_kinds_whose_operator_makes_clusters_own_them() -> None:
    assert {k.name for k in KINDS.values() if k.makes_clusters} == {"RayJob", "RayService"}
    assert kuberay.operator_parent({kuberay.ORIGINATED_FROM_LABEL: "RayService"}) == "RayService"
    assert kuberay.operator_parent({kuberay.ORIGINATED_FROM_LABEL: "RayCluster"}) == ""
    assert kuberay.operator_parent({}) == ""


def test_unknown_kinds_sort_last_and_change_as_a_cluster_would() -> None:
    assert kuberay.order("Deployment") == kuberay.UNKNOWN_ORDER > max(k.order for k in KINDS.values())
    assert kuberay.changes("Deployment") is Changes.IN_PLACE
    assert kuberay.cluster_spec_path("Deployment") == ""


def _group(name: str) -> dict[str, Any]:
    return {"groupName": name, "replicas": 1}


@pytest.mark.parametrize(("manifest", "groups"), [
    pytest.param({"kind": "RayCluster", "spec": {"workerGroupSpecs": [_group("a")]}}, ["a"], id="raycluster"),
    pytest.param({"kind": "RayJob", "spec": {"rayClusterSpec": {"workerGroupSpecs": [_group("b")]}}}, ["b"],
                 id="rayjob"),
    pytest.param({"kind": "RayService", "spec": {"rayClusterConfig": {"workerGroupSpecs": [_group("c")]}}}, ["c"],
                 id="rayservice"),
    pytest.param({"kind": "RayCronJob", "spec": {"jobTemplate": {"rayClusterSpec": {"workerGroupSpecs": [
        _group("d")]}}}}, ["d"], id="raycronjob"),
    pytest.param({"kind": "RayJob", "spec": {"clusterSelector": {"ray.io/cluster": "x"}}}, [], id="selector"),
    pytest.param({"kind": "ConfigMap", "data": {"workerGroupSpecs": "x"}}, [], id="configmap"),
])
def test_worker_groups_are_found_where_each_kind_keeps_its_cluster(manifest: dict[str, Any], groups: list[str]) -> None:
    assert list(kuberay.worker_groups(manifest)) == groups


def test_the_autoscaler_owns_replicas_only_with_in_tree_autoscaling() -> None:
    job = {"kind": "RayJob", "spec": {"rayClusterSpec": {"enableInTreeAutoscaling": True}}}
    assert kuberay.autoscaler_pointers(job) == ["/spec/rayClusterSpec/workerGroupSpecs/*/replicas",
                                                "/spec/rayClusterSpec/workerGroupSpecs/*/scaleStrategy"]
    assert kuberay.autoscaler_pointers({"kind": "RayCluster", "spec": {}}) == []


@pytest.mark.parametrize(("manifest", "warnings"), [
    pytest.param({"kind": "RayCronJob", "spec": {"timeZone": "UTC"},
                  "metadata": {"annotations": {CONCURRENCY_ANNOTATION: "Forbid"}}},
                 ("RayCronJob needs the KubeRay operator's feature gate RayCronJob (alpha, off by default: "
                  "--feature-gates=RayCronJob=true)",
                  "spec.timeZone needs KubeRay 1.7; an older CRD drops it",
                  f"{CONCURRENCY_ANNOTATION} is honoured on the local target only: KubeRay's RayCronJob has no "
                  "concurrencyPolicy"), id="raycronjob"),
    pytest.param({"kind": "RayService", "spec": {"upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}}},
                 ("spec.upgradeStrategy.type: NewClusterWithIncrementalUpgrade needs the KubeRay operator's feature "
                  "gate RayServiceIncrementalUpgrade (alpha, off by default: "
                  "--feature-gates=RayServiceIncrementalUpgrade=true)",), id="incremental-upgrade"),
    pytest.param({"kind": "RayService", "spec": {"upgradeStrategy": {"type": "NewCluster"}}}, (), id="new-cluster"),
    pytest.param({"kind": "RayCluster", "spec": {}}, (), id="raycluster"),
])
def test_what_needs_a_feature_gate_or_a_newer_kuberay_is_said(manifest: dict[str, Any],
                                                                warnings: tuple[str, ...]) -> None:
    assert kuberay.gate_warnings(manifest) == warnings


@pytest.mark.parametrize(("path", "in_place"), [
    pytest.param("metadata.labels.team", True, id="label"),
    pytest.param("spec.serveConfigV2", True, id="serve-config"),
    pytest.param("spec.rayClusterConfig.workerGroupSpecs[cpu].maxReplicas", True, id="service-scale"),
    pytest.param("spec.workerGroupSpecs[cpu]", True, id="whole-group"),
    pytest.param("spec.suspend", True, id="suspend"),
    pytest.param("spec.workerGroupSpecs[cpu].template.spec.containers[ray].image", False, id="pod-template"),
    pytest.param("spec.headGroupSpec.rayStartParams.num-cpus", False, id="ray-start-params"),
])
def test_in_place_fields_are_those_kuberay_applies_to_running_clusters(path: str, in_place: bool) -> None:
    assert bool(kuberay.IN_PLACE.fullmatch(path)) is in_place


def test_a_job_spec_is_found_in_a_rayjob_and_a_raycronjob_template() -> None:
    assert kuberay.job_spec({"kind": "RayJob", "spec": {"entrypoint": "a"}}) == {"entrypoint": "a"}
    assert kuberay.job_spec({"kind": "RayCronJob", "spec": {"jobTemplate": {"entrypoint": "b"}}}) == {"entrypoint": "b"}
    assert kuberay.job_spec({"kind": "RayCluster", "spec": {"entrypoint": "c"}}) == {}
