"""The kinds and fields of KubeRay 1.5-1.7: RayCronJob, deletionStrategy rules, authOptions, RayService upgrade
strategies, feature-gate warnings; and the local target's cron schedule (due slots, missed ones, suspend)."""
from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.commands.cli import main
from reconciler.model import (
    CONCURRENCY_ANNOTATION,
    STARTING_DEADLINE_ANNOTATION,
    Action,
    DesiredObject,
    EnvironmentSpec,
    ObjectRef,
    RenderedEnvironment,
    TargetSpec,
)
from reconciler.pipeline import planner
from reconciler.targets.kubernetes.options import KubernetesOptions
from reconciler.targets.local import cron
from tests.conftest import GitRemote
from tests.unit.test_reconcile import env_yaml
from tests.unit.test_render import REMOVE, dump, edited, errors_of, fixture, write_environment

JOB = fixture("rayjob.yaml")
CRON = {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": "hourly"},
        "spec": {"schedule": "0 * * * *", "jobTemplate": copy.deepcopy(JOB["spec"])}}


def cron_doc(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(CRON)
    doc["spec"].update(spec)
    return {k: v for k, v in doc.items()}


@pytest.mark.parametrize("doc, where, reason", [
    pytest.param(cron_doc(schedule="every hour"), "RayCronJob/hourly: spec.schedule: ", "is not a cron schedule",
                 id="cron-schedule"),
    pytest.param(cron_doc(timeZone="Mars/Olympus"), "RayCronJob/hourly: spec.timeZone: ", "is not an IANA time zone",
                 id="cron-time-zone"),
    pytest.param(cron_doc(jobTemplate={**JOB["spec"], "ttlSecondsAfterFinished": 60,
                                       "shutdownAfterJobFinishes": False}),
                 "RayCronJob/hourly: spec.jobTemplate.ttlSecondsAfterFinished: ", "requires shutdownAfterJobFinishes",
                 id="cron-template-checked-as-a-rayjob"),
    pytest.param(edited("rayjob.yaml", {"spec.deletionStrategy": {"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 30}}]}}),
        "RayJob/train: spec.deletionStrategy: ", "deletionRules replace shutdownAfterJobFinishes",
        id="rules-with-shutdown"),
    pytest.param(edited("rayjob.yaml", {"spec.shutdownAfterJobFinishes": REMOVE, "spec.ttlSecondsAfterFinished": REMOVE,
                                        "spec.deletionStrategy": {"deletionRules": [
                                            {"policy": "DeleteAll", "condition": {"jobStatus": "SUCCEEDED"}}]}}),
                 "RayJob/train: spec.deletionStrategy.deletionRules[0].policy: ", "must be one of DeleteCluster",
                 id="rule-policy"),
    pytest.param(edited("rayjob.yaml", {"spec.shutdownAfterJobFinishes": REMOVE, "spec.ttlSecondsAfterFinished": REMOVE,
                                        "spec.deletionStrategy": {"deletionRules": [
                                            {"policy": "DeleteSelf",
                                             "condition": {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}}]}}),
                 "RayJob/train: spec.deletionStrategy.deletionRules[0].condition: ",
                 "exactly one of jobStatus or jobDeploymentStatus", id="rule-condition"),
    pytest.param(edited("rayjob.yaml", {"spec.deletionStrategy": {"onSuccess": {"policy": "DeleteSelf"}}}),
                 "RayJob/train: spec.deletionStrategy: ", "or both onSuccess and onFailure", id="legacy-half"),
    pytest.param(edited("raycluster.yaml", {"spec.authOptions": {"mode": "password"}}),
                 "RayCluster/demo: spec.authOptions.mode: ", "must be one of disabled, token", id="auth-mode"),
    pytest.param(edited("rayservice.yaml", {"spec.upgradeStrategy": {"type": "BlueGreen"}}),
                 "RayService/serve: spec.upgradeStrategy.type: ", "must be one of NewCluster", id="service-upgrade"),
    pytest.param({**CRON, "metadata": {"name": "hourly", "annotations": {CONCURRENCY_ANNOTATION: "Skip"}}},
                 f"RayCronJob/hourly: metadata.annotations.{CONCURRENCY_ANNOTATION}: ",
                 "must be one of Allow, Forbid, Replace", id="cron-concurrency-policy"),
    pytest.param({**CRON, "metadata": {"name": "hourly", "annotations": {STARTING_DEADLINE_ANNOTATION: "10m"}}},
                 f"RayCronJob/hourly: metadata.annotations.{STARTING_DEADLINE_ANNOTATION}: ",
                 "must be a whole number of seconds", id="cron-starting-deadline"),
])
def test_new_fields_are_checked_as_their_crds_say(tmp_path: Path, doc: dict, where: str, reason: str) -> None:
    errors = errors_of(write_environment(tmp_path, {"x.yaml": dump(doc)}))
    assert any(where in e and reason in e for e in errors), errors


def test_valid_deletion_rules_and_a_cron_job_render(tmp_path: Path) -> None:
    job = edited("rayjob.yaml", {"spec.shutdownAfterJobFinishes": REMOVE, "spec.ttlSecondsAfterFinished": REMOVE,
                                 "spec.deletionStrategy": {"deletionRules": [
                                     {"policy": "DeleteCluster",
                                      "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 30}},
                                     {"policy": "DeleteSelf", "condition": {"jobDeploymentStatus": "Failed"}}]}})
    tree = write_environment(tmp_path, {"x.yaml": dump(job, cron_doc(timeZone="Europe/Paris"))})
    from reconciler.pipeline.render import render
    from tests.memory import TARGETS
    assert sorted(d.ref.kind for d in render(tree, "prod", "", TARGETS).objects) == ["RayCronJob", "RayJob"]


def _item(doc: dict) -> planner.PlanItem:
    spec = EnvironmentSpec("prod", TargetSpec("kubernetes", KubernetesOptions("ray-prod")))
    desired = DesiredObject(ObjectRef.of(doc, "ray-prod"), doc, "x.yaml", 0)
    [item] = planner.plan(RenderedEnvironment(spec, (desired,)), {}, frozenset(), {})
    return item


def test_what_needs_an_operator_feature_gate_says_so_in_the_plan() -> None:
    cron_item = _item(cron_doc(timeZone="UTC"))
    service = edited("rayservice.yaml", {"spec.upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}})

    assert cron_item.action == Action.CREATE
    assert cron_item.warnings == (
        "RayCronJob needs the KubeRay operator's feature gate RayCronJob (alpha, off by default: "
        "--feature-gates=RayCronJob=true)", "spec.timeZone needs KubeRay 1.7; an older CRD drops it")
    assert _item(service).warnings == (
        "spec.upgradeStrategy.type: NewClusterWithIncrementalUpgrade needs the KubeRay operator's feature gate "
        "RayServiceIncrementalUpgrade (alpha, off by default: --feature-gates=RayServiceIncrementalUpgrade=true)",)
    assert _item(fixture("rayservice.yaml")).warnings == ()
    annotated = {**cron_doc(), "metadata": {"name": "hourly", "annotations": {CONCURRENCY_ANNOTATION: "Forbid"}}}
    assert _item(annotated).warnings[1:] == (f"{CONCURRENCY_ANNOTATION} is honoured on the local target only: "
                                             "KubeRay's RayCronJob has no concurrencyPolicy",)


def test_the_local_target_plans_a_cron_job_without_kuberays_warnings(
        remote: GitRemote, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The local target is its own cron controller: no operator feature gate, and its annotations apply."""
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    doc = cron_doc(timeZone="Europe/Paris", jobTemplate={"entrypoint": "python x.py",
                                                         "clusterSelector": {"ray.io/cluster": "demo"}})
    doc["metadata"]["annotations"] = {CONCURRENCY_ANNOTATION: "Forbid", STARTING_DEADLINE_ANNOTATION: "600"}
    remote.write("environments/a/cron.yaml", dump(doc))
    remote.commit("a cron job")

    assert main(["plan", "--repo", remote.url, "--environment", "a", "--state-dir", str(tmp_path / "state")]) == 1
    out = capsys.readouterr().out
    assert "RayCronJob/default/hourly" in out and "create" in out
    assert "warning" not in out and "feature gate" not in out


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_due_slots_follow_the_schedule_and_its_time_zone() -> None:
    hourly = {"schedule": "0 * * * *"}
    assert cron.due_slots(hourly, _at("2026-12-03T10:30:00"), _at("2026-12-03T12:00:00")) == [
        _at("2026-12-03T11:00:00"), _at("2026-12-03T12:00:00")]
    paris = {"schedule": "0 2 * * *", "timeZone": "Europe/Paris"}  # 02:00 in Paris is 01:00 UTC in December
    assert cron.due_slots(paris, _at("2026-12-03T00:00:00"), _at("2026-12-04T00:00:00")) == [
        _at("2026-12-03T01:00:00")]


@pytest.mark.parametrize("spec, status, expected", [
    pytest.param({"shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 60}, {"jobStatus": "SUCCEEDED"},
                 [(1060.0, "DeleteCluster")], id="shutdown-after-ttl"),
    pytest.param({"deletionStrategy": {"deletionRules": [
        {"policy": "DeleteWorkers", "condition": {"jobStatus": "SUCCEEDED"}},
        {"policy": "DeleteSelf", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 300}},
        {"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED"}}]}}, {"jobStatus": "SUCCEEDED"},
        [(1000.0, "DeleteWorkers"), (1300.0, "DeleteSelf")], id="rules-by-job-status"),
    pytest.param({"deletionStrategy": {"deletionRules": [
        {"policy": "DeleteSelf", "condition": {"jobDeploymentStatus": "Failed", "ttlSeconds": 5}}]}},
        {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed"}, [(1005.0, "DeleteSelf")], id="rule-on-deployment"),
    pytest.param({"deletionStrategy": {"onSuccess": {"policy": "DeleteNone"},
                                       "onFailure": {"policy": "DeleteCluster"}}},
                 {"jobStatus": "FAILED"}, [(1000.0, "DeleteCluster")], id="legacy"),
    pytest.param({}, {"jobStatus": "SUCCEEDED"}, [], id="nothing"),
])
def test_what_the_local_target_cleans_up_after_a_run_follows_kuberay(spec: dict, status: dict, expected: list) -> None:
    from reconciler.targets.local.control import cleanups
    assert cleanups(spec, status, 1000.0) == expected
