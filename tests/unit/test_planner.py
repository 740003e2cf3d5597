"""The planner: desired + live + inventory + ledger -> ordered actions, with KubeRay's semantics and prune guards."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.model import (
    Action,
    DesiredObject,
    EnvironmentSpec,
    Flag,
    LiveObject,
    ObjectRef,
    PlanItem,
    RenderedEnvironment,
    TargetSpec,
    job_submission_id,
)
from reconciler.pipeline.planner import PlanOptions, plan

TESTDATA = Path(__file__).parent.parent / "testdata" / "unit"
NAMESPACE = "ray-prod"


def fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((TESTDATA / name).read_text())


def owned(manifest: dict[str, Any], environment: str = "prod", name: str | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A manifest as render() produces it: namespace, ownership labels, revision and extra annotations."""
    doc = copy.deepcopy(manifest)
    meta = doc.setdefault("metadata", {})
    if name:
        meta["name"] = name
    meta["namespace"] = NAMESPACE
    meta["labels"] = {**meta.get("labels", {}), "app.kubernetes.io/managed-by": "ray-gitops",
                      "gitops.ray.io/environment": environment}
    meta["annotations"] = {"gitops.ray.io/revision": "2222222", **(annotations or {})}
    return doc


def ref(manifest: dict[str, Any]) -> ObjectRef:
    return ObjectRef.of(manifest, NAMESPACE)


def desired(manifest: dict[str, Any]) -> DesiredObject:
    return DesiredObject(ref(manifest), manifest, "environments/prod/objects.yaml", 0)


def live(manifest: dict[str, Any], status: dict[str, Any] | None = None) -> LiveObject:
    """What a target reports: the stored manifest with server noise, an older revision and a status."""
    doc = copy.deepcopy(manifest)
    doc["metadata"].update(uid="0b5e", resourceVersion="4711", generation=2, creationTimestamp="2026-11-20T10:00:00Z",
                           managedFields=[{"manager": "ray-gitops", "operation": "Apply"}])
    doc["metadata"].setdefault("annotations", {})["gitops.ray.io/revision"] = "1111111"
    doc["status"] = status or {"state": "ready"}
    return LiveObject(ref(doc), doc, doc["status"])


def environment(*manifests: dict[str, Any], prune: bool = True, ignore: tuple[str, ...] = ()) -> RenderedEnvironment:
    spec = EnvironmentSpec("prod", TargetSpec("kubernetes", {"namespace": NAMESPACE}), prune=prune, ignore=ignore)
    return RenderedEnvironment(spec, tuple(desired(m) for m in manifests), "2222222")


def plan_one(git: dict[str, Any], on_target: dict[str, Any] | None,
             finished: dict[str, str] | None = None) -> PlanItem:
    lives = {ref(on_target): live(on_target)} if on_target is not None else {}
    (item,) = plan(environment(git), lives, set(lives), finished or {})
    return item


# --- RayCluster / ConfigMap / RayService -------------------------------------------------------------------

CLUSTER = owned(fixture("raycluster.yaml"))


def edit(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Copy with dotted-path changes; `__` stands for `.`, a digit for a list index (spec__workerGroupSpecs__0...)."""
    doc = copy.deepcopy(doc)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        node[int(last) if last.isdigit() else last] = value
    return doc


def autoscaled(doc: dict[str, Any]) -> dict[str, Any]:
    return edit(doc, spec__enableInTreeAutoscaling=True)


def reordered(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["workerGroupSpecs"].reverse()
    return doc


NEW_IMAGE = {"spec__workerGroupSpecs__0__template__spec__containers__0__image": "rayproject/ray:2.61.0"}
IMAGE_PATH = "spec.workerGroupSpecs[cpu].template.spec.containers[ray-worker].image"
RECREATING_CLUSTER = owned(fixture("raycluster.yaml"), annotations={"gitops.ray.io/on-template-change": "recreate"})
SERVICE = owned(fixture("rayservice.yaml"))
SERVICE_IMAGE = {"spec__rayClusterConfig__workerGroupSpecs__0__template__spec__containers__0__image":
                 "rayproject/ray:2.61.0"}
SERVICE_IMAGE_PATH = "spec.rayClusterConfig.workerGroupSpecs[cpu].template.spec.containers[ray-worker].image"
CONFIGMAP = owned(fixture("configmap.yaml"))


@pytest.mark.parametrize("git, on_target, action, reason", [
    pytest.param(CLUSTER, None, Action.CREATE, "not on the target", id="missing-live-is-created"),
    pytest.param(CLUSTER, CLUSTER, Action.NOOP, "in sync", id="identical-is-noop"),
    pytest.param(edit(CLUSTER, spec__workerGroupSpecs__0__replicas=3), CLUSTER, Action.UPDATE,
                 "changed in place: spec.workerGroupSpecs[cpu].replicas", id="replicas-changed-in-place"),
    pytest.param(edit(CLUSTER, spec__workerGroupSpecs__1__maxReplicas=1), CLUSTER, Action.UPDATE,
                 "changed in place: spec.workerGroupSpecs[gpu].maxReplicas", id="max-replicas-changed-in-place"),
    pytest.param(edit(CLUSTER, metadata__labels__team="research"), CLUSTER, Action.UPDATE,
                 "changed in place: metadata.labels.team", id="label-changed-in-place"),
    pytest.param(edit(CONFIGMAP, data__LOG_LEVEL="debug"), CONFIGMAP, Action.UPDATE,
                 "changed in place: data.LOG_LEVEL", id="configmap-data-changed-in-place"),
    pytest.param(autoscaled(CLUSTER),
                 edit(autoscaled(CLUSTER), spec__workerGroupSpecs__0__replicas=4,
                      spec__workerGroupSpecs__0__scaleStrategy={"workersToDelete": ["demo-cpu-worker-x2v9q"]}),
                 Action.NOOP, "in sync", id="autoscaler-owned-replicas-are-not-a-change"),
    pytest.param(edit(autoscaled(CLUSTER), spec__workerGroupSpecs__0__maxReplicas=6),
                 edit(autoscaled(CLUSTER), spec__workerGroupSpecs__0__replicas=4),
                 Action.UPDATE, "changed in place: spec.workerGroupSpecs[cpu].maxReplicas",
                 id="autoscaled-max-replicas-is-a-change"),
    pytest.param(edit(CLUSTER, **NEW_IMAGE), CLUSTER, Action.UPDATE, f"{IMAGE_PATH} changed; applied, pending restart",
                 id="template-change-is-pending-restart"),
    pytest.param(edit(RECREATING_CLUSTER, **NEW_IMAGE), RECREATING_CLUSTER, Action.RECREATE,
                 f"{IMAGE_PATH} changed; gitops.ray.io/on-template-change=recreate",
                 id="template-change-recreates-when-annotated"),
    pytest.param(edit(CLUSTER, spec__upgradeStrategy={"type": "Recreate"}, **NEW_IMAGE),
                 edit(CLUSTER, spec__upgradeStrategy={"type": "Recreate"}), Action.UPDATE,
                 f"{IMAGE_PATH} changed; upgradeStrategy Recreate restarts all pods",
                 id="template-change-with-upgrade-strategy-recreate"),
    pytest.param(edit(CLUSTER, spec__upgradeStrategy=None, **NEW_IMAGE), edit(CLUSTER, spec__upgradeStrategy=None),
                 Action.UPDATE, f"{IMAGE_PATH} changed; applied, pending restart",
                 id="template-change-with-null-upgrade-strategy"),
    pytest.param(edit(SERVICE, spec__serveConfigV2="applications: []\n"), SERVICE, Action.UPDATE,
                 "changed in place: spec.serveConfigV2", id="rayservice-serve-config-changed-in-place"),
    pytest.param(edit(SERVICE, **SERVICE_IMAGE), SERVICE, Action.UPDATE,
                 f"{SERVICE_IMAGE_PATH} changed; KubeRay upgrades the RayService to a new cluster",
                 id="rayservice-cluster-change-upgrades-to-a-new-cluster"),
    pytest.param(edit(SERVICE, spec__upgradeStrategy={"type": "None"}, **SERVICE_IMAGE),
                 edit(SERVICE, spec__upgradeStrategy={"type": "None"}), Action.UPDATE,
                 f"{SERVICE_IMAGE_PATH} changed; upgradeStrategy None: KubeRay keeps serving on the current cluster "
                 "(pending restart)", id="rayservice-cluster-change-under-upgrade-strategy-none-is-pending-restart"),
    pytest.param(edit(SERVICE, spec__upgradeStrategy={"type": "None"}), SERVICE, Action.UPDATE,
                 "changed in place: spec.upgradeStrategy", id="rayservice-switched-to-upgrade-strategy-none-alone"),
])
def test_object_plan(git: dict[str, Any], on_target: dict[str, Any] | None, action: Action, reason: str) -> None:
    item = plan_one(git, on_target)

    assert (item.action, item.ref) == (action, ref(git))
    assert item.reason.startswith(reason), item.reason
    assert (Flag.PENDING_RESTART in item.flags) == ("pending restart" in reason), item.flags
    assert item.desired is not None and item.desired.manifest is git


def test_autoscaled_max_replicas_change_does_not_mention_autoscaler_owned_fields() -> None:
    item = plan_one(edit(autoscaled(CLUSTER), spec__workerGroupSpecs__0__maxReplicas=6),
                    edit(autoscaled(CLUSTER), spec__workerGroupSpecs__0__replicas=4))

    assert item.reason == "changed in place: spec.workerGroupSpecs[cpu].maxReplicas"
    assert "replicas: 4" not in item.diff and "maxReplicas: 6" in item.diff


def test_pending_restart_tells_how_to_restart() -> None:
    item = plan_one(edit(CLUSTER, **NEW_IMAGE), CLUSTER)

    assert "upgradeStrategy.type: Recreate" in item.reason
    assert "gitops.ray.io/on-template-change: recreate" in item.reason
    assert "rayproject/ray:2.61.0" in item.diff


def test_create_carries_the_full_desired_object_as_diff() -> None:
    item = plan_one(CLUSTER, None)

    assert item.diff.startswith("--- live/RayCluster/ray-prod/demo\n+++ git/RayCluster/ray-prod/demo\n")
    added = item.diff.splitlines()[3:]
    assert all(line.startswith("+") for line in added)
    assert any(line.endswith("groupName: gpu") for line in added)


def without_gpu() -> dict[str, Any]:
    git = copy.deepcopy(CLUSTER)
    assert git["spec"]["workerGroupSpecs"][1]["groupName"] == "gpu"
    del git["spec"]["workerGroupSpecs"][1]
    return git


def test_a_removed_worker_group_that_still_has_nodes_is_scaled_to_zero_where_it_was() -> None:
    from dataclasses import replace

    from reconciler.pipeline.planner import drain
    on_target = replace(live(CLUSTER), oldest_nodes={"headgroup": 1.0, "cpu": 1.0, "gpu": 2.0})
    planned, draining = drain(environment(without_gpu()), {ref(CLUSTER): on_target}, {}, 1000.0)

    groups = planned.objects[0].manifest["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == [g["groupName"] for g in CLUSTER["spec"]["workerGroupSpecs"]]
    assert {k: groups[1][k] for k in ("replicas", "minReplicas", "maxReplicas")} == dict.fromkeys(
        ("replicas", "minReplicas", "maxReplicas"), 0)
    assert draining == {ref(CLUSTER): {"gpu": 1000.0}}
    item, = plan(planned, {ref(CLUSTER): on_target}, frozenset({ref(CLUSTER)}), {})
    assert item.action is Action.UPDATE and item.warnings == ()
    assert set(item.changes) >= {"spec.workerGroupSpecs[gpu].maxReplicas", "spec.workerGroupSpecs[gpu].replicas"}

    later, still = drain(environment(without_gpu()), {ref(CLUSTER): on_target}, {ref(CLUSTER): {"gpu": 1000.0}},
                         1000.0 + 301)
    assert still == {} and later.objects[0].manifest == without_gpu()  # drained too long: it goes anyway


def test_a_drained_worker_group_leaves_the_spec_in_place_and_one_still_running_warns() -> None:
    from dataclasses import replace
    item = plan_one(without_gpu(), CLUSTER)  # no node of gpu left
    assert (item.action, item.warnings) == (Action.UPDATE, ())
    assert item.reason == "changed in place: spec.workerGroupSpecs[gpu]" and "group-removed" in item.flags

    running = replace(live(CLUSTER), oldest_nodes={"gpu": 2.0})
    item, = plan(environment(without_gpu()), {ref(CLUSTER): running}, frozenset({ref(CLUSTER)}), {})
    (warning,) = item.warnings
    assert "worker group gpu left Git and still has nodes after draining for 300 s" in warning
    assert "kuberay#1739" in warning


def test_reordered_worker_groups_warn_that_the_autoscaler_patches_by_index() -> None:
    item = plan_one(reordered(edit(CLUSTER, spec__workerGroupSpecs__0__replicas=3)), CLUSTER)

    assert item.action is Action.UPDATE
    assert item.reason == "changed in place: spec.workerGroupSpecs[cpu].replicas"
    assert any("reordered" in w and "by index" in w for w in item.warnings), item.warnings


def test_reordering_alone_is_not_a_change() -> None:
    assert plan_one(reordered(CLUSTER), CLUSTER).action is Action.NOOP


def test_plain_change_has_no_warnings() -> None:
    assert plan_one(edit(CLUSTER, spec__workerGroupSpecs__0__replicas=3), CLUSTER).warnings == ()


def test_environment_ignore_rules_hide_drift() -> None:
    on_target = edit(CONFIGMAP, data__LOG_LEVEL="debug")
    env = environment(CONFIGMAP, ignore=("/data/LOG_LEVEL",))

    (item,) = plan(env, {ref(on_target): live(on_target)}, set(), {})

    assert item.action is Action.NOOP


# --- RayJob --------------------------------------------------------------------------------------------------

JOB = owned(fixture("rayjob.yaml"))
RUN = job_submission_id("prod", "train", JOB)
AUTOSCALED_JOB = edit(JOB, spec__rayClusterSpec__enableInTreeAutoscaling=True)


def test_job_submission_id_used_by_the_planner_has_the_documented_shape() -> None:
    assert RUN.startswith("prod-train-") and len(RUN) == len("prod-train-") + 10


@pytest.mark.parametrize("git, on_target, finished, action, reason", [
    pytest.param(JOB, None, {}, Action.SUBMIT, f"new run {RUN}", id="new-job-is-submitted"),
    pytest.param(JOB, None, {RUN: "SUCCEEDED"}, Action.SKIP, f"run {RUN} already finished (SUCCEEDED); not re-run",
                 id="finished-and-deleted-by-ttl-is-not-rerun"),
    pytest.param(JOB, JOB, {RUN: "FAILED"}, Action.SKIP, f"run {RUN} already finished (FAILED); not re-run",
                 id="finished-and-still-live-is-not-rerun"),
    pytest.param(edit(JOB, metadata__labels__team="research"), JOB, {RUN: "SUCCEEDED"}, Action.UPDATE,
                 f"changed in place: metadata.labels.team (run {RUN} already finished; not re-run)",
                 id="finished-and-still-live-takes-a-label-change-in-place"),
    pytest.param(edit(JOB, metadata__labels__team="research"), None, {RUN: "SUCCEEDED"}, Action.SKIP,
                 f"run {RUN} already finished", id="finished-and-deleted-ignores-a-label-change"),
    pytest.param(JOB, edit(JOB, spec__entrypoint="changed by someone"), {RUN: "FAILED"}, Action.SKIP,
                 f"run {RUN} already finished (FAILED)", id="finished-run-spec-is-never-compared"),
    pytest.param(JOB, JOB, {}, Action.NOOP, f"run {RUN} in progress or done", id="identical-is-noop"),
    pytest.param(edit(JOB, spec__entrypoint="python train.py --epochs 5"), JOB, {}, Action.RECREATE,
                 "spec changed (spec.entrypoint); KubeRay ignores RayJob edits, so new run "
                 + job_submission_id("prod", "train", edit(JOB, spec__entrypoint="python train.py --epochs 5")),
                 id="changed-entrypoint-is-a-new-run"),
    pytest.param(edit(owned(fixture("rayjob.yaml"), annotations={"gitops.ray.io/on-change": "ignore"}),
                      spec__entrypoint="python train.py --epochs 5"),
                 owned(fixture("rayjob.yaml"), annotations={"gitops.ray.io/on-change": "ignore"}), {}, Action.SKIP,
                 "spec changed (spec.entrypoint); gitops.ray.io/on-change=ignore", id="on-change-ignore-keeps-the-run"),
    pytest.param(edit(JOB, spec__suspend=True), JOB, {}, Action.UPDATE, "suspend toggled",
                 id="suspend-alone-is-in-place"),
    pytest.param(edit(JOB, metadata__labels__team="research"), JOB, {}, Action.UPDATE,
                 "changed in place: metadata.labels.team", id="metadata-alone-is-in-place"),
    pytest.param(AUTOSCALED_JOB, edit(AUTOSCALED_JOB, spec__rayClusterSpec__workerGroupSpecs__0__replicas=3,
                                      spec__rayClusterSpec__workerGroupSpecs__0__scaleStrategy={"workersToDelete": []}),
                 {}, Action.NOOP, f"run {job_submission_id('prod', 'train', AUTOSCALED_JOB)} in progress or done",
                 id="autoscaler-owned-replicas-inside-rayjob-are-not-a-change"),
    pytest.param(edit(JOB, spec__rayClusterSpec__workerGroupSpecs__0__replicas=2), JOB, {}, Action.RECREATE,
                 "spec changed (spec.rayClusterSpec.workerGroupSpecs[cpu].replicas)",
                 id="replicas-inside-rayjob-without-autoscaler-are-a-new-run"),
])
def test_rayjob_plan(git: dict[str, Any], on_target: dict[str, Any] | None, finished: dict[str, str],
                     action: Action, reason: str) -> None:
    item = plan_one(git, on_target, finished)

    assert item.action is action
    assert item.reason.startswith(reason), item.reason


# --- prune ---------------------------------------------------------------------------------------------------

def configmap(name: str, environment_name: str = "prod", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return owned(fixture("configmap.yaml"), environment_name, name, annotations)


def prune_plan(git: list[dict[str, Any]], on_target: list[dict[str, Any]], inventory: list[dict[str, Any]],
               prune: bool = True, options: PlanOptions = PlanOptions()) -> list[tuple[Action, str, str]]:
    items = plan(environment(*git, prune=prune), {ref(m): live(m) for m in on_target}, {ref(m) for m in inventory},
                 {}, options)
    return [(i.action, i.ref.name, i.reason) for i in items if i.ref not in {ref(m) for m in git}]


def test_object_removed_from_git_is_deleted() -> None:
    kept, gone = configmap("kept"), configmap("gone")

    assert prune_plan([kept], [kept, gone], [kept, gone]) == [(Action.DELETE, "gone", "not in Git; pruned")]


def test_inventory_object_that_is_not_live_needs_no_delete() -> None:
    kept, gone = configmap("kept"), configmap("gone")

    assert prune_plan([kept], [kept], [kept, gone]) == []


def test_live_object_outside_the_inventory_is_never_pruned() -> None:
    kept, stranger = configmap("kept"), configmap("stranger")

    assert prune_plan([kept], [kept, stranger], [kept]) == []


@pytest.mark.parametrize("gone, prune, reason", [
    pytest.param(configmap("gone"), False, "not in Git; prune is disabled for this environment",
                 id="prune-false"),
    pytest.param(configmap("gone", annotations={"gitops.ray.io/prune": "disabled"}), True,
                 "not in Git; protected by gitops.ray.io/prune: disabled", id="prune-disabled-annotation"),
    pytest.param(configmap("gone", environment_name="staging"), True,
                 "not in Git, but its ownership labels no longer match; kept", id="labels-of-another-environment"),
    pytest.param(edit(configmap("gone"), metadata__labels={"gitops.ray.io/environment": "prod"}), True,
                 "not in Git, but its ownership labels no longer match; kept", id="managed-by-label-removed"),
    pytest.param(edit(configmap("gone"), metadata__ownerReferences=[{"kind": "RayJob", "name": "j"}]), True,
                 "not in Git, but it belongs to RayJob; operator children are never pruned", id="owner-reference"),
    pytest.param(edit(configmap("gone"), metadata__labels={**configmap("gone")["metadata"]["labels"],
                                                           "ray.io/originated-from-crd": "RayService"}), True,
                 "not in Git, but it belongs to RayService; operator children are never pruned",
                 id="originated-from-ray-service"),
])
def test_prune_is_skipped_for_protected_objects(gone: dict[str, Any], prune: bool, reason: str) -> None:
    kept = configmap("kept")

    assert prune_plan([kept], [kept, gone], [kept, gone], prune=prune) == [(Action.SKIP, "gone", reason)]


def test_empty_render_refuses_every_delete() -> None:
    objects = [configmap("a"), configmap("b")]

    result = prune_plan([], objects, objects)

    assert [(a, n) for a, n, _ in result] == [(Action.SKIP, "a"), (Action.SKIP, "b")]
    assert all("refused" in reason and "renders no objects" in reason for _, _, reason in result)


def test_empty_render_deletes_everything_when_explicitly_allowed() -> None:
    objects = [configmap("a"), configmap("b")]

    result = prune_plan([], objects, objects, options=PlanOptions(allow_empty_prune=True))

    assert [(a, n) for a, n, _ in result] == [(Action.DELETE, "a"), (Action.DELETE, "b")]


def test_empty_render_deletes_everything_when_both_guards_are_lifted() -> None:
    objects = [configmap("a"), configmap("b")]

    result = prune_plan([], objects, objects, options=PlanOptions(allow_empty_prune=True, allow_large_prune=True))

    assert [(a, n) for a, n, _ in result] == [(Action.DELETE, "a"), (Action.DELETE, "b")]


def test_empty_render_of_a_single_object_deletes_it_when_allowed() -> None:
    only = configmap("only")

    assert prune_plan([], [only], [only], options=PlanOptions(allow_empty_prune=True)) == [
        (Action.DELETE, "only", "not in Git; pruned")]


def test_deleting_more_than_the_max_fraction_is_refused() -> None:
    objects = [configmap(n) for n in ("a", "b", "c", "d")]

    result = prune_plan(objects[:1], objects, objects)

    assert [(a, n) for a, n, _ in result] == [(Action.SKIP, "b"), (Action.SKIP, "c"), (Action.SKIP, "d")]
    assert all(r.startswith("prune refused: 3 of 4 objects exceeds pruneGuard.maxFraction 0.5") for *_, r in result)


def test_large_prune_is_allowed_explicitly() -> None:
    objects = [configmap(n) for n in ("a", "b", "c", "d")]

    result = prune_plan(objects[:1], objects, objects, options=PlanOptions(allow_large_prune=True))

    assert [(a, n) for a, n, _ in result] == [(Action.DELETE, "b"), (Action.DELETE, "c"), (Action.DELETE, "d")]


def test_deleting_exactly_the_max_fraction_is_allowed() -> None:
    objects = [configmap(n) for n in ("a", "b", "c", "d")]

    result = prune_plan(objects[:2], objects, objects)

    assert [(a, n) for a, n, _ in result] == [(Action.DELETE, "c"), (Action.DELETE, "d")]


def test_plan_applies_configmaps_then_clusters_then_jobs_and_deletes_last() -> None:
    old_job, old_cluster, old_config = (owned(fixture("rayjob.yaml"), name="old-job"),
                                        owned(fixture("raycluster.yaml"), name="old-cluster"), configmap("old-config"))
    git = [JOB, CLUSTER, CONFIGMAP, SERVICE]
    on_target = [old_config, old_cluster, old_job]
    env = environment(*git)

    items = plan(env, {ref(m): live(m) for m in on_target}, {ref(m) for m in git + on_target}, {})

    assert [(i.action, i.ref.kind, i.ref.name) for i in items] == [
        (Action.CREATE, "ConfigMap", "settings"),
        (Action.CREATE, "RayCluster", "demo"),
        (Action.CREATE, "RayService", "serve"),
        (Action.SUBMIT, "RayJob", "train"),
        (Action.DELETE, "RayJob", "old-job"),
        (Action.DELETE, "RayCluster", "old-cluster"),
        (Action.DELETE, "ConfigMap", "old-config"),
    ]
