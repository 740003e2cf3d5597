"""Validation as tables: `environment.yaml` documents and RayCluster / RayJob / RayService / RayCronJob /
ConfigMap / Secret objects in, the parsed environment or errors out; every error names its file, document,
object and field (the reasons are checked by their words that matter)."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from reconciler.model import (
    CONCURRENCY_ANNOTATION,
    ENVIRONMENT_LABEL,
    MANAGED_BY_LABEL,
    ON_CHANGE_ANNOTATION,
    STARTING_DEADLINE_ANNOTATION,
    EnvironmentSpec,
    Patch,
    TargetSpec,
)
from reconciler.pipeline import validate
from reconciler.targets.kubernetes.options import KubernetesOptions
from tests.memory import TARGETS

ENV_FILE = "environments/prod/environment.yaml"
FILE = "environments/prod/ray.yaml"
ALL_KINDS = frozenset({"RayCluster", "RayJob", "RayService", "RayCronJob", "ConfigMap", "Secret"})
PROD = EnvironmentSpec("prod", TargetSpec("kubernetes", KubernetesOptions("ray-prod", others=frozenset({"shared"}))),
                       max_workers_per_group=8)


def environment(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "gitops.ray.io/v1alpha1", "kind": "Environment", "metadata": {"name": "prod"},
            "spec": {"target": {"kubernetes": {"namespace": "ray-prod"}}, **spec}}


def test_a_full_environment_is_parsed() -> None:
    doc = environment(interval="1m30s", prune=False, suspend=True, ignore=["/spec/workerGroupSpecs/*/replicas"],
                      policy={"maxWorkersPerGroup": 16}, pruneGuard={"maxFraction": 0.25}, base="bases/train/",
                      patches=[{"target": {"kind": "RayCluster", "name": "train"},
                                "patch": {"spec": {"workerGroupSpecs": [{"groupName": "gpu", "replicas": 2}]}}}],
                      substitute={"RAY_VERSION": "2.60.0", "REPLICAS": 2}, dependsOn=[{"environment": "staging"}])
    spec, errors = validate.environment(doc, ENV_FILE, "prod", TARGETS)
    assert errors == []
    assert spec == EnvironmentSpec(
        name="prod", target=TargetSpec("kubernetes", KubernetesOptions("ray-prod")), interval=90.0, prune=False,
        suspend=True, ignore=("/spec/workerGroupSpecs/*/replicas",), max_workers_per_group=16, prune_max_fraction=0.25,
        base="bases/train", patches=(Patch("RayCluster", "train", {"spec": {"workerGroupSpecs": [
            {"groupName": "gpu", "replicas": 2}]}}),),
        substitute=(("RAY_VERSION", "2.60.0"), ("REPLICAS", 2)), depends_on=("staging",))


def test_the_defaults() -> None:
    spec, errors = validate.environment(environment(), ENV_FILE, "prod", TARGETS)
    assert errors == [] and spec is not None
    assert (spec.interval, spec.prune, spec.suspend, spec.prune_max_fraction, spec.max_workers_per_group) == (
        60.0, True, False, 0.5, None)


def _with(change: Any) -> dict[str, Any]:
    doc = environment()
    change(doc)
    return doc


@pytest.mark.parametrize(("doc", "errors"), [
    pytest.param(None, [("", "required field is missing"), ("", "must be an Environment document")], id="empty"),
    pytest.param(["a list"], [("", "must be a mapping, got list"), ("", "must be an Environment document")],
                 id="a list"),
    pytest.param(_with(lambda d: d.update(apiVersion="gitops.ray.io/v1")),
                 [("apiVersion", "must be gitops.ray.io/v1alpha1 kind Environment")], id="another apiVersion"),
    pytest.param(_with(lambda d: d.update(metadata={"name": "staging"})),
                 [("metadata.name", "must equal the directory name 'prod', got 'staging'")], id="another name"),
    pytest.param(_with(lambda d: d["spec"].pop("target")),
                 [("spec.target", "required field is missing"), ("spec.target", "must name exactly one target")],
                 id="no target"),
    pytest.param(_with(lambda d: d["spec"]["target"].update(local={})),
                 [("spec.target", "must name exactly one target: local or kubernetes")], id="two targets"),
    pytest.param(_with(lambda d: d["spec"].update(target={"docker": {}})),
                 [("spec.target", "must name exactly one target")], id="an unknown target"),
    pytest.param(_with(lambda d: d["spec"].update(target={"kubernetes": {}})),
                 [("spec.target.kubernetes.namespace", "required field is missing")], id="no namespace"),
    pytest.param(_with(lambda d: d["spec"].update(interval="every minute")),
                 [("spec.interval", "not a duration: 'every minute'")], id="a bad interval"),
    pytest.param(_with(lambda d: d["spec"].update(prune="yes")),
                 [("spec.prune", "must be true or false, got 'yes'")], id="prune as a string"),
    pytest.param(_with(lambda d: d["spec"].update(ignore=["spec/x"])),
                 [("spec.ignore[0]", "must be a JSON pointer such as /spec/x/*/y, got 'spec/x'")],
                 id="an ignore rule without /"),
    pytest.param(_with(lambda d: d["spec"].update(policy={"maxWorkersPerGroup": 0})),
                 [("spec.policy.maxWorkersPerGroup", "must be an integer >= 1, got 0")], id="maxWorkersPerGroup 0"),
    pytest.param(_with(lambda d: d["spec"].update(pruneGuard={"maxFraction": 1.5})),
                 [("spec.pruneGuard.maxFraction", "must be a number in (0, 1], got 1.5")], id="maxFraction > 1"),
    pytest.param(_with(lambda d: d["spec"].update(pruneGuard={"maxFraction": True})),
                 [("spec.pruneGuard.maxFraction", "must be a number in (0, 1], got True")], id="maxFraction true"),
    pytest.param(_with(lambda d: d["spec"].update(base="../other-repo")),
                 [("spec.base", "must be a directory of the repository")], id="a base outside the repository"),
    pytest.param(_with(lambda d: d["spec"].update(base="environments/dev")),
                 [("spec.base", "outside environments/")], id="another environment as base"),
    pytest.param(_with(lambda d: d["spec"].update(base="/etc")),
                 [("spec.base", "relative to its root")], id="an absolute base"),
    pytest.param(_with(lambda d: d["spec"].update(patches=[{"patch": {"spec": {}}, "when": "always"}])),
                 [("spec.patches[0].when", "unknown option (known: patch, target)"),
                  ("spec.patches[0].target", "required field is missing"),  # and so are its kind and name:
                  ("spec.patches[0].target.kind", "required field is missing"),
                  ("spec.patches[0].target.name", "required field is missing")], id="a patch without target"),
    pytest.param(_with(lambda d: d["spec"].update(patches=[{"target": {"kind": "RayCluster"}, "patch": {}}])),
                 [("spec.patches[0].target.name", "required field is missing"),
                  ("spec.patches[0].patch", "must be a merge patch (a mapping) or a JSON patch")],
                 id="a patch without name and with an empty patch"),
    pytest.param(_with(lambda d: d["spec"].update(substitute={"RAY-VERSION": "2.60.0", "GPUS": [1]})),
                 [("spec.substitute.RAY-VERSION", "must be a variable name"),
                  ("spec.substitute.GPUS", "must be a string, number or boolean, got [1]")], id="bad variables"),
    pytest.param(_with(lambda d: d["spec"].update(dependsOn=[{"environment": "prod"}, {"environment": "Staging!"},
                                                             {"env": "dev"}])),
                 [("spec.dependsOn[0].environment", "an environment cannot depend on itself"),
                  ("spec.dependsOn[1].environment", "must be an environment name, got 'Staging!'"),
                  ("spec.dependsOn[2].env", "unknown option (known: environment)"),
                  ("spec.dependsOn[2].environment", "required field is missing")], id="bad dependencies"),
])
def test_environment_errors_name_file_object_and_field(doc: Any, errors: list[tuple[str, str]]) -> None:
    spec, got = validate.environment(doc, ENV_FILE, "prod", TARGETS)
    assert spec is None
    assert [(e.file, e.document, e.object) for e in got] == [(ENV_FILE, None, "Environment/prod")] * len(got)
    assert len(got) == len(errors), got
    for error, (path, words) in zip(got, errors, strict=True):
        assert error.path == path and words in error.reason, error


def test_a_negative_interval_is_refused() -> None:
    spec, errors = validate.environment(environment(interval=-30), ENV_FILE, "prod", TARGETS)
    assert spec is None and [e.path for e in errors] == ["spec.interval"]


# -- objects -------------------------------------------------------------------------------------------------------
def container(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "image": "rayproject/ray:2.60.0", **more}


def group(name: str = "cpu", **more: Any) -> dict[str, Any]:
    return {"groupName": name, "replicas": 1, "minReplicas": 0, "maxReplicas": 4, "rayStartParams": {},
            "template": {"spec": {"containers": [container("ray-worker", resources={
                "limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "500m"}})]}}, **more}


def cluster_spec(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"headGroupSpec": {"rayStartParams": {"num-cpus": "0"},
                              "template": {"spec": {"containers": [container("ray-head")]}}},
            "workerGroupSpecs": list(groups) or [group()]}


def raycluster(**meta: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "demo", **meta},
            "spec": cluster_spec()}


def rayjob(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "train"},
            "spec": {"entrypoint": "python train.py", "rayClusterSpec": cluster_spec(), **spec}}


SERVE = "applications:\n- name: greeter\n  import_path: serve_app:app\n  runtime_env: {working_dir: apps/greeter}\n"


def rayservice(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "greeter"},
            "spec": {"serveConfigV2": SERVE, "rayClusterConfig": cluster_spec(), **spec}}


def raycronjob(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": rayjob()["spec"], **spec}}


def configmap(data: Any, kind: str = "ConfigMap", name: str = "settings") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": data}


def edit(doc: dict[str, Any], change: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    change(out)
    return out


def workers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["workerGroupSpecs"]


@pytest.mark.parametrize("doc", [
    pytest.param(raycluster(namespace="shared", labels={ENVIRONMENT_LABEL: "prod", MANAGED_BY_LABEL: "ray-gitops"},
                            annotations={ON_CHANGE_ANNOTATION: "rerun"}), id="RayCluster"),
    pytest.param(rayjob(submissionMode="HTTPMode", shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=60,
                        entrypointNumCpus=0.5, runtimeEnvYAML="working_dir: jobs/train\npip: [torch]\n"), id="RayJob"),
    pytest.param(edit(rayjob(submissionMode="InteractiveMode"), lambda d: d["spec"].pop("entrypoint")),
                 id="RayJob in InteractiveMode, no entrypoint"),
    pytest.param(edit(rayjob(clusterSelector={"ray.io/cluster": "demo"}), lambda d: d["spec"].pop("rayClusterSpec")),
                 id="RayJob on an existing cluster"),
    pytest.param(rayjob(deletionStrategy={"deletionRules": [{"policy": "DeleteCluster", "condition": {
        "jobStatus": "SUCCEEDED", "ttlSeconds": 30}}]}), id="RayJob with deletionRules"),
    pytest.param(rayservice(upgradeStrategy={"type": "NewCluster"}, rayClusterDeletionDelaySeconds=60),
                 id="RayService"),
    pytest.param(raycronjob(timeZone="Europe/Paris", suspend=False), id="RayCronJob"),
    pytest.param(configmap({"mode": "fast"}), id="ConfigMap"),
    pytest.param(configmap({"token": "aGk="}, "Secret", "token"), id="Secret"),
])
def test_valid_objects_have_no_errors(doc: dict[str, Any]) -> None:
    assert validate.ray_object(doc, FILE, 2, PROD, ALL_KINDS) == ([], [])


DEADLINE = f"metadata.annotations.{STARTING_DEADLINE_ANNOTATION}"
G0 = "spec.workerGroupSpecs[0]"
C0 = f"{G0}.template.spec.containers[0]"


@pytest.mark.parametrize(("doc", "obj", "errors"), [
    pytest.param({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}, "Deployment/web",
                 [("kind", "unsupported object apps/v1/Deployment")], id="not a Ray object"),
    pytest.param({"apiVersion": "ray.io/v1alpha1", "kind": "RayCluster", "metadata": {"name": "demo"}},
                 "RayCluster/demo", [("kind", "unsupported object ray.io/v1alpha1/RayCluster")], id="an old version"),
    pytest.param(edit(raycluster(), lambda d: d["metadata"].update(name=None, generateName="demo-")), "RayCluster/None",
                 [("metadata.generateName", "needs a stable metadata.name")], id="generateName"),
    pytest.param(raycluster(name="Demo_1"), "RayCluster/Demo_1",
                 [("metadata.name", "must be a DNS-1123 name of at most 63 characters, got 'Demo_1'")],
                 id="a name that is not DNS-1123"),
    pytest.param(raycluster(namespace="kube-system"), "RayCluster/demo",
                 [("metadata.namespace", "kube-system is outside this environment")], id="a namespace outside"),
    pytest.param(raycluster(namespace="Ray_Prod"), "RayCluster/demo",
                 [("metadata.namespace", "must be a DNS-1123 label")], id="a namespace that is not a label"),
    pytest.param(configmap({}, name="ray-gitops-ledger-prod"), "ConfigMap/ray-gitops-ledger-prod",
                 [("metadata.name", "ConfigMaps are ray-gitops' own ledgers")], id="a ledger ConfigMap"),
    pytest.param(raycluster(labels={ENVIRONMENT_LABEL: "dev"}), "RayCluster/demo",
                 [(f"metadata.labels.{ENVIRONMENT_LABEL}", "Git may not set it to 'dev'")], id="another env's label"),
    pytest.param(raycluster(annotations={ON_CHANGE_ANNOTATION: "sometimes"}), "RayCluster/demo",
                 [(f"metadata.annotations.{ON_CHANGE_ANNOTATION}", "must be one of ignore, rerun, got 'sometimes'")],
                 id="an unknown on-change"),
    pytest.param(raycluster(annotations={CONCURRENCY_ANNOTATION: "Sometimes"}), "RayCluster/demo",
                 [(f"metadata.annotations.{CONCURRENCY_ANNOTATION}", "must be one of Allow, Forbid, Replace")],
                 id="an unknown concurrency policy"),
    pytest.param(raycronjob() | {"metadata": {"name": "nightly", "annotations": {STARTING_DEADLINE_ANNOTATION: 600}}},
                 "RayCronJob/nightly", [(DEADLINE, "must be a whole number of seconds as a string")],
                 id="a deadline as a number"),
    pytest.param(configmap({"port": 8080, "debug": True}), "ConfigMap/settings",
                 [("data.port", "must be a string (Kubernetes' type is map[string]string), got 8080; quote it"),
                  ("data.debug", "got True; quote it")], id="ConfigMap values that are not strings"),
    pytest.param(configmap({"token": 1234}, "Secret", "token"), "Secret/token",
                 [("data.token", "got int; quote it")], id="a Secret's value is never shown"),
    # RayCluster
    pytest.param(edit(raycluster(), lambda d: d["spec"].pop("headGroupSpec")), "RayCluster/demo",
                 [("spec.headGroupSpec", "required field is missing"),  # and so is its template:
                  ("spec.headGroupSpec.template", "required field is missing")], id="no head"),
    pytest.param(edit(raycluster(), lambda d: d["spec"].update(enableInTreeAutoscaling="true")), "RayCluster/demo",
                 [("spec.enableInTreeAutoscaling", "must be true or false, got 'true'")], id="autoscaling as text"),
    pytest.param(edit(raycluster(), lambda d: d["spec"].update(upgradeStrategy={"type": "Rolling"})),
                 "RayCluster/demo", [("spec.upgradeStrategy.type", "must be one of None, Recreate, got 'Rolling'")],
                 id="an unknown upgrade strategy"),
    pytest.param(edit(raycluster(), lambda d: d["spec"]["headGroupSpec"].update(rayStartParams={"num-cpus": 0})),
                 "RayCluster/demo",
                 [("spec.headGroupSpec.rayStartParams.num-cpus", "KubeRay's type is map[string]string), got 0")],
                 id="rayStartParams as a number"),
    pytest.param(edit(raycluster(), lambda d: workers(d).append(group())), "RayCluster/demo",
                 [("spec.workerGroupSpecs[1].groupName", "duplicate worker group 'cpu'")], id="a group twice"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0].pop("groupName")), "RayCluster/demo",
                 [(f"{G0}.groupName", "required field is missing")], id="a group without name"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0].update(minReplicas=5)), "RayCluster/demo",
                 [(f"{G0}.minReplicas", "minReplicas 5 is greater than maxReplicas 4")], id="min above max"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0].update(replicas=9, maxReplicas=12)), "RayCluster/demo",
                 [(f"{G0}.replicas", "9 exceeds policy.maxWorkersPerGroup 8"),
                  (f"{G0}.maxReplicas", "12 exceeds policy.maxWorkersPerGroup 8")], id="above the policy"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0].update(replicas=-1, numOfHosts=0)), "RayCluster/demo",
                 [(f"{G0}.replicas", "must be an integer >= 0, got -1"),
                  (f"{G0}.numOfHosts", "must be an integer >= 1, got 0")], id="negative replicas, no hosts"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0]["template"]["spec"].update(containers=[])),
                 "RayCluster/demo", [(f"{G0}.template.spec.containers", "must list at least one container")],
                 id="no container"),
    pytest.param(edit(raycluster(), lambda d: workers(d)[0]["template"]["spec"]["containers"][0].update(
        resources={"limits": {"memory": "lots"}})), "RayCluster/demo",
                 [(f"{C0}.resources.limits.memory", "lots")], id="a quantity that is not one"),
    # RayJob
    pytest.param(edit(rayjob(), lambda d: d["spec"].pop("rayClusterSpec")), "RayJob/train",
                 [("spec", "set exactly one of rayClusterSpec")], id="neither cluster nor selector"),
    pytest.param(rayjob(clusterSelector={"ray.io/cluster": "demo"}), "RayJob/train",
                 [("spec", "set exactly one of rayClusterSpec")], id="both cluster and selector"),
    pytest.param(edit(rayjob(clusterSelector={}), lambda d: d["spec"].pop("rayClusterSpec")), "RayJob/train",
                 [("spec.clusterSelector.ray.io/cluster", "required field is missing")], id="an empty selector"),
    pytest.param(edit(rayjob(), lambda d: d["spec"].pop("entrypoint")), "RayJob/train",
                 [("spec.entrypoint", "required field is missing")], id="no entrypoint"),
    pytest.param(rayjob(jobId="mine"), "RayJob/train", [("spec.jobId", "is set by ray-gitops")], id="a jobId"),
    pytest.param(rayjob(submissionMode="BatchMode"), "RayJob/train",
                 [("spec.submissionMode", "must be one of HTTPMode, InteractiveMode, K8sJobMode, SidecarMode")],
                 id="an unknown submission mode"),
    pytest.param(rayjob(submissionMode="SidecarMode", submitterPodTemplate={"spec": {"containers": [container("s")]}}),
                 "RayJob/train", [("spec.submitterPodTemplate", "KubeRay refuses a submitterPodTemplate with it")],
                 id="a submitter template in SidecarMode"),
    pytest.param(rayjob(ttlSecondsAfterFinished=60), "RayJob/train",
                 [("spec.ttlSecondsAfterFinished", "requires shutdownAfterJobFinishes: true")], id="ttl alone"),
    pytest.param(rayjob(entrypointNumCpus=-1, entrypointNumGpus="1"), "RayJob/train",
                 [("spec.entrypointNumCpus", "must be a number >= 0, got -1"),
                  ("spec.entrypointNumGpus", "must be a number >= 0, got '1'")], id="entrypoint resources"),
    pytest.param(rayjob(runtimeEnvYAML="working_dir: ../secrets\n"), "RayJob/train",
                 [("spec.runtimeEnvYAML.working_dir", "must be relative to the repository root and stay inside it")],
                 id="a working_dir outside the repository"),
    pytest.param(rayjob(runtimeEnvYAML="pip: [torch]\npip: [jax]\n"), "RayJob/train",
                 [("spec.runtimeEnvYAML.pip", "duplicate key")], id="a runtimeEnvYAML key twice"),
    pytest.param(rayjob(deletionStrategy={"onSuccess": {"policy": "DeleteCluster"}}), "RayJob/train",
                 [("spec.deletionStrategy", "needs deletionRules, or both onSuccess and onFailure")],
                 id="onSuccess alone"),
    pytest.param(rayjob(shutdownAfterJobFinishes=True, deletionStrategy={"deletionRules": [
        {"policy": "DeleteAll", "condition": {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Failed"}}]}),
                 "RayJob/train",
                 [("spec.deletionStrategy", "deletionRules replace shutdownAfterJobFinishes"),
                  ("spec.deletionStrategy.deletionRules[0].policy", "must be one of DeleteCluster, DeleteNone"),
                  ("spec.deletionStrategy.deletionRules[0].condition", "set exactly one of jobStatus or "
                   "jobDeploymentStatus")], id="bad deletion rules"),
    # RayService
    pytest.param(rayservice(serveConfigV2="applications:\n- name: greeter\n"), "RayService/greeter",
                 [("spec.serveConfigV2.applications[0].import_path", "required field is missing")],
                 id="an application without import_path"),
    pytest.param(rayservice(serveConfigV2="applications:\n- import_path: a:b\n  runtime_env: {working_dir: /srv}\n"),
                 "RayService/greeter",
                 [("spec.serveConfigV2.applications[0].runtime_env.working_dir", "must be relative")],
                 id="an absolute working_dir"),
    pytest.param(rayservice(upgradeStrategy={"type": "Recreate"}), "RayService/greeter",
                 [("spec.upgradeStrategy.type", "must be one of NewCluster, NewClusterWithIncrementalUpgrade, None")],
                 id="a RayCluster's upgrade strategy on a RayService"),
    pytest.param(edit(rayservice(), lambda d: d["spec"].pop("rayClusterConfig")), "RayService/greeter",
                 [("spec.rayClusterConfig", "required field is missing"),  # and so are its head and template:
                  ("spec.rayClusterConfig.headGroupSpec", "required field is missing"),
                  ("spec.rayClusterConfig.headGroupSpec.template", "required field is missing")], id="no cluster"),
    # RayCronJob
    pytest.param(raycronjob(schedule="every night"), "RayCronJob/nightly",
                 [("spec.schedule", "is not a cron schedule")], id="not a cron schedule"),
    pytest.param(raycronjob(timeZone="Mars/Olympus"), "RayCronJob/nightly",
                 [("spec.timeZone", "is not an IANA time zone")], id="not a time zone"),
    pytest.param(edit(raycronjob(), lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].update(
        maxReplicas=99)), "RayCronJob/nightly",
                 [("spec.jobTemplate.rayClusterSpec.workerGroupSpecs[0].maxReplicas",
                   "99 exceeds policy.maxWorkersPerGroup 8")], id="the job template's cluster"),
])
def test_object_errors_name_file_document_object_and_field(doc: dict[str, Any], obj: str,
                                                           errors: list[tuple[str, str]]) -> None:
    got, _ = validate.ray_object(doc, FILE, 2, PROD, ALL_KINDS)
    assert [(e.file, e.document, e.object) for e in got] == [(FILE, 2, obj)] * len(got)
    assert len(got) == len(errors), got
    for error, (path, words) in zip(got, errors, strict=True):
        assert error.path == path and words in error.reason, error


def test_a_kind_the_target_does_not_support_is_named() -> None:
    [error], _ = validate.ray_object(rayjob(), FILE, 0, PROD, frozenset({"RayCluster"}))
    assert (error.object, error.path, error.reason) == ("RayJob/train", "kind",
                                                        "RayJob is not supported by the kubernetes target")


def test_the_targets_own_check_runs_only_on_an_object_that_passed() -> None:
    seen: list[str] = []

    def target_check(doc: dict[str, Any], c: validate.Checker) -> None:
        seen.append(doc["metadata"]["name"])
        c.warn("spec.workerGroupSpecs[0].replicas", "held at the cap")
    assert validate.ray_object(raycluster(name="Bad_Name"), FILE, 0, PROD, ALL_KINDS, target_check)[1] == []
    errors, [warning] = validate.ray_object(raycluster(), FILE, 0, PROD, ALL_KINDS, target_check)
    assert errors == [] and seen == ["demo"]
    assert (warning.object, warning.path, warning.reason) == ("RayCluster/demo", "spec.workerGroupSpecs[0].replicas",
                                                              "held at the cap")


def test_a_deadline_that_is_not_a_plain_number_is_refused() -> None:
    doc = raycronjob() | {"metadata": {"name": "nightly", "annotations": {STARTING_DEADLINE_ANNOTATION: "6²"}}}
    errors, _ = validate.ray_object(doc, FILE, 0, PROD, ALL_KINDS)
    assert [e.path for e in errors] == [DEADLINE]


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param({"entrypoint": "python a.py"}, False, id="the default submitter"),
    pytest.param({"submitterPodTemplate": {"spec": {"containers": [{"name": "s", "command": ["ray", "job"]}]}}}, True,
                 id="K8sJobMode (the default) with a command"),
    pytest.param({"submissionMode": "HTTPMode",
                  "submitterPodTemplate": {"spec": {"containers": [{"name": "s", "command": ["x"]}]}}}, False,
                 id="HTTPMode has no submitter Pod"),
    pytest.param({"submitterPodTemplate": {"spec": {"containers": [{"name": "s"}]}}}, False, id="no command"),
    pytest.param({"submitterPodTemplate": {"spec": {"containers": []}}}, False, id="no container"),
])
def test_submitter_command(spec: dict[str, Any], expected: bool) -> None:
    assert validate.submitter_command(spec) is expected


@pytest.mark.parametrize(("value", "expected"), [
    ("ray-prod", True), ("a" * 63, True), ("a" * 64, False), ("Ray-Prod", False), ("-prod", False), ("prod-", False),
    ("ray.prod", False), ("", False),
])
def test_dns_label(value: str, expected: bool) -> None:
    assert validate.dns_label(value) is expected
