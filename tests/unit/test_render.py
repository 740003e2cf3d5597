"""Render + validate: environments built on disk, rendered with `DirectoryTree`; every error is precise."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.errors import InvalidEnvironment
from reconciler.pipeline.render import list_environments, render
from reconciler.pipeline.source import DirectoryTree
from tests.memory import TARGETS

TESTDATA = Path(__file__).parent.parent / "testdata" / "unit"
ENV = "environments/prod"
REMOVE = object()


def fixture(name: str) -> dict[str, Any]:
    return yaml.safe_load((TESTDATA / name).read_text())


def edited(name: str, edits: dict[str, Any]) -> dict[str, Any]:
    """A fixture with dotted paths (`spec.workerGroupSpecs.0.replicas`) set, or removed with REMOVE."""
    doc = copy.deepcopy(fixture(name))
    for path, value in edits.items():
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        key = int(last) if isinstance(node, list) else last
        if value is REMOVE:
            del node[key]
        else:
            node[key] = value
    return doc


def dump(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def write_environment(root: Path, files: dict[str, str], name: str = "prod") -> DirectoryTree:
    """`environments/<name>/` with the kubernetes environment.yaml unless `files` brings its own."""
    files = {"environment.yaml": (TESTDATA / "environment-kubernetes.yaml").read_text(), **files}
    for path, text in files.items():
        target = root / "environments" / name / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return DirectoryTree(root)


def errors_of(tree: DirectoryTree, name: str = "prod") -> list[str]:
    with pytest.raises(InvalidEnvironment) as caught:
        render(tree, name, "", TARGETS)
    assert caught.value.environment == name
    return [str(e) for e in caught.value.errors]


BAD_INDENT = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  a: "1"
 b: "2"
"""

CONFIGMAP = fixture("configmap.yaml")
LOCAL_ENV = (TESTDATA / "environment-local.yaml").read_text()
# KubeRay's light-weight submitter sample: a submitter Pod running its own command instead of `ray job submit`
SUBMITTER = {"spec": {"restartPolicy": "Never", "containers": [
    {"name": "submitter", "image": "quay.io/kuberay/submitter:v1.5.1", "command": ["/submitter"],
     "args": ["--", "python", "/home/ray/samples/sample_code.py"]}]}}


def env_file(edits: dict[str, Any]) -> str:
    return dump(edited("environment-kubernetes.yaml", edits))


@pytest.mark.parametrize("files, where, reason", [
    pytest.param({"bad.yaml": BAD_INDENT},
                 "environments/prod/bad.yaml: ", "invalid YAML (line 7, column 2)", id="invalid-yaml"),
    pytest.param({"web.yaml": dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}})},
                 "environments/prod/web.yaml#0: Deployment/web: kind: ", "unsupported object apps/v1/Deployment",
                 id="unknown-kind"),
    pytest.param({"cluster.yaml": dump(CONFIGMAP, edited("raycluster.yaml", {"spec.headGroupSpec": REMOVE}))},
                 "environments/prod/cluster.yaml#1: RayCluster/demo: spec.headGroupSpec: ",
                 "required field is missing", id="missing-head-group"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {"spec.workerGroupSpecs.1.groupName": REMOVE}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: spec.workerGroupSpecs[1].groupName: ",
                 "required field is missing", id="missing-group-name"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {"spec.workerGroupSpecs.1.groupName": "cpu"}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: spec.workerGroupSpecs[1].groupName: ",
                 "duplicate worker group 'cpu'", id="duplicate-group-name"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {"spec.workerGroupSpecs.0.replicas": "2"}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].replicas: ",
                 "must be an integer", id="replicas-not-integer"),
    pytest.param({"cluster.yaml": dump(CONFIGMAP, edited("raycluster.yaml",
                                                         {"spec.workerGroupSpecs.0.minReplicas": 5}))},
                 "environments/prod/cluster.yaml#1: RayCluster/demo: spec.workerGroupSpecs[0].minReplicas: ",
                 "minReplicas 5 is greater than maxReplicas 4", id="min-above-max"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {"spec.headGroupSpec.rayStartParams.num-cpus": 0}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: spec.headGroupSpec.rayStartParams.num-cpus: ",
                 "must be a string", id="ray-start-param-not-string"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {
        "spec.workerGroupSpecs.0.template.spec.containers.0.resources.limits.cpu": "two"}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: "
                 "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.cpu: ",
                 "not a resource quantity: 'two'", id="bad-cpu-quantity"),
    pytest.param({"cluster.yaml": dump(edited("raycluster.yaml", {"spec.workerGroupSpecs.1.maxReplicas": 100}))},
                 "environments/prod/cluster.yaml#0: RayCluster/demo: spec.workerGroupSpecs[1].maxReplicas: ",
                 "100 exceeds policy.maxWorkersPerGroup 8", id="max-workers-policy-exceeded"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.rayClusterSpec.workerGroupSpecs.0.minReplicas": 7}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.rayClusterSpec.workerGroupSpecs[0].minReplicas: ",
                 "minReplicas 7 is greater than maxReplicas 3", id="job-cluster-min-above-max"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.clusterSelector": {"ray.io/cluster": "demo"}}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec: ",
                 "set exactly one of rayClusterSpec", id="job-with-cluster-spec-and-selector"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.rayClusterSpec": REMOVE}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec: ",
                 "set exactly one of rayClusterSpec", id="job-with-neither-cluster-spec-nor-selector"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.shutdownAfterJobFinishes": REMOVE}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.ttlSecondsAfterFinished: ",
                 "requires shutdownAfterJobFinishes: true", id="ttl-without-shutdown"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.runtimeEnvYAML": "working_dir: ../x\n"}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.runtimeEnvYAML.working_dir: ",
                 "stay inside it, got '../x'", id="working-dir-escapes-repository"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {
        "metadata.annotations": {"gitops.ray.io/on-change": "always"}}))},
                 "environments/prod/job.yaml#0: RayJob/train: metadata.annotations.gitops.ray.io/on-change: ",
                 "must be one of ignore, rerun, got 'always'", id="bad-on-change-annotation"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"metadata.name": REMOVE,
                                                         "metadata.generateName": "train-"}))},
                 "environments/prod/job.yaml#0: RayJob/?: metadata.generateName: ",
                 "a GitOps object needs a stable metadata.name: ray-gitops knows an object by its name to diff it, "
                 "prune it and never run it twice", id="generate-name-says-why-a-name-is-needed"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.entrypoint": REMOVE}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.entrypoint: ",
                 "required field is missing: the operator submits it as the job", id="job-without-entrypoint"),
    pytest.param({"job.yaml": dump(edited("rayjob.yaml", {"spec.submissionMode": "SidecarMode",
                                                         "spec.submitterPodTemplate": SUBMITTER}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.submitterPodTemplate: ",
                 "KubeRay refuses a submitterPodTemplate with it", id="sidecar-mode-with-submitter-template"),
    pytest.param({"environment.yaml": LOCAL_ENV, "job.yaml": dump(edited("rayjob.yaml", {
        "spec.entrypoint": REMOVE, "spec.submitterPodTemplate": SUBMITTER}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.submitterPodTemplate: ",
                 "its container's own command cannot run on the local target: there is no submitter Pod",
                 id="custom-submitter-on-local-target"),
    pytest.param({"environment.yaml": LOCAL_ENV, "job.yaml": dump(edited("rayjob.yaml", {
        "spec.submissionMode": "InteractiveMode"}))},
                 "environments/prod/job.yaml#0: RayJob/train: spec.submissionMode: ",
                 "InteractiveMode waits for a person to submit the job", id="interactive-mode-on-local-target"),
    pytest.param({"environment.yaml": env_file({"metadata.name": "staging"})},
                 "environments/prod/environment.yaml: Environment/prod: metadata.name: ",
                 "must equal the directory name 'prod', got 'staging'", id="environment-name-mismatch"),
    pytest.param({"environment.yaml": env_file({"spec.target.local": {}})},
                 "environments/prod/environment.yaml: Environment/prod: spec.target: ",
                 "must name exactly one target: local or kubernetes", id="two-targets"),
    pytest.param({"environment.yaml": env_file({"spec.base": "../base"})},
                 "environments/prod/environment.yaml: Environment/prod: spec.base: ",
                 "must be a directory of the repository", id="base-outside-the-repository"),
    pytest.param({"README.md": "# prod\n"},
                 "environments/prod/README.md: ", "only YAML files (.yaml, .yml)", id="non-yaml-file"),
    pytest.param({"a.yaml": dump(CONFIGMAP), "b.yaml": dump(fixture("raycluster.yaml"), CONFIGMAP)},
                 "environments/prod/b.yaml#1: ConfigMap/ray-prod/settings: ",
                 "duplicate object, first defined in environments/prod/a.yaml#0", id="duplicate-across-files"),
    pytest.param({"serve.yaml": dump(edited("rayservice.yaml", {"spec.serveConfigV2": "applications: [{name: a}]\n"}))},
                 "environments/prod/serve.yaml#0: RayService/serve: spec.serveConfigV2.applications[0].import_path: ",
                 "required field is missing", id="serve-application-without-import-path"),
    pytest.param({"serve.yaml": dump(edited("rayservice.yaml", {"spec.serveConfigV2": "applications: [\n"}))},
                 "environments/prod/serve.yaml#0: RayService/serve: spec.serveConfigV2: ",
                 "invalid YAML", id="serve-config-not-yaml"),
    pytest.param({"environment.yaml": LOCAL_ENV, "serve.yaml": dump(edited("rayservice.yaml", {
        "spec.serveConfigV2": "grpc_options: {grpc_servicer_functions: [user.add_servicer]}\napplications: []\n"}))},
                 "environments/prod/serve.yaml#0: RayService/serve: "
                 "spec.serveConfigV2.grpc_options.grpc_servicer_functions: ",
                 "Serve's gRPC proxy listens on every interface", id="serve-grpc-on-local-target"),
])
def test_invalid_environment_error_names_file_document_object_and_field(
        tmp_path: Path, files: dict[str, str], where: str, reason: str) -> None:
    errors = errors_of(write_environment(tmp_path, files))

    assert any(e.startswith(where) and reason in e for e in errors), errors


def test_a_job_whose_submitter_runs_its_own_command_needs_no_entrypoint(tmp_path: Path) -> None:
    """As KubeRay's CRD: `entrypoint` is optional; a K8sJobMode submitter Pod with a command of its own runs that."""
    job = edited("rayjob.yaml", {"spec.entrypoint": REMOVE, "spec.submitterPodTemplate": SUBMITTER})
    assert [o.ref.name for o in render(write_environment(tmp_path, {"job.yaml": dump(job)}), "prod", "",
                                       TARGETS).objects] == ["train"]


@pytest.mark.parametrize("environment_yaml", [
    pytest.param(env_file({"spec.target": {}}), id="empty-target"),
    pytest.param("{}\n", id="empty-mapping"),
])
def test_environment_without_a_target_says_what_is_missing(tmp_path: Path, environment_yaml: str) -> None:
    errors = errors_of(write_environment(tmp_path, {"environment.yaml": environment_yaml}))

    assert errors, "an invalid environment must say why"
    assert any("environments/prod/environment.yaml" in e for e in errors)


def test_every_error_of_an_environment_is_reported_at_once(tmp_path: Path) -> None:
    tree = write_environment(tmp_path, {
        "cluster.yaml": dump(edited("raycluster.yaml", {"spec.workerGroupSpecs.0.minReplicas": 5})),
        "jobs/train.yaml": dump(edited("rayjob.yaml", {"spec.shutdownAfterJobFinishes": REMOVE})),
        "notes.txt": "todo\n",
        "z.yaml": dump(CONFIGMAP, CONFIGMAP),
    })

    with pytest.raises(InvalidEnvironment) as caught:
        render(tree, "prod", "", TARGETS)

    errors = [str(e) for e in caught.value.errors]
    assert len(errors) == 4, errors
    assert [e.split(": ")[0] for e in errors] == [
        "environments/prod/cluster.yaml#0", "environments/prod/jobs/train.yaml#0",
        "environments/prod/notes.txt", "environments/prod/z.yaml#1"]
    assert str(caught.value).startswith("environment prod: 4 validation error(s)\n")


def test_environment_file_errors_do_not_hide_errors_in_other_files(tmp_path: Path) -> None:
    tree = write_environment(tmp_path, {"environment.yaml": env_file({"metadata.name": "staging"}),
                                        "notes.txt": "todo\n"})

    errors = errors_of(tree)

    assert any(e.startswith("environments/prod/environment.yaml: ") for e in errors)
    assert any(e.startswith("environments/prod/notes.txt: ") for e in errors)


def test_missing_environment_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ENV).mkdir(parents=True)
    (tmp_path / ENV / "cluster.yaml").write_text(dump(fixture("raycluster.yaml")))

    assert errors_of(DirectoryTree(tmp_path)) == ["environments/prod/environment.yaml: file not found"]


def test_valid_multi_document_file_renders_every_object_with_ownership(tmp_path: Path) -> None:
    tree = write_environment(tmp_path, {
        "app.yaml": dump(CONFIGMAP, fixture("raycluster.yaml")),
        "jobs/train.yaml": dump(fixture("rayjob.yaml")),
    })

    rendered = render(tree, "prod", "0123abcdef", TARGETS)

    assert rendered.revision == "0123abcdef"
    assert (rendered.spec.name, rendered.spec.target.kind, rendered.spec.target.namespace) == (
        "prod", "kubernetes", "ray-prod")
    assert rendered.spec.max_workers_per_group == 8
    assert [(o.ref.kind, o.ref.namespace, o.ref.name, o.file, o.document) for o in rendered.objects] == [
        ("ConfigMap", "ray-prod", "settings", "environments/prod/app.yaml", 0),
        ("RayCluster", "ray-prod", "demo", "environments/prod/app.yaml", 1),
        ("RayJob", "ray-prod", "train", "environments/prod/jobs/train.yaml", 0),
    ]
    for obj in rendered.objects:
        meta = obj.manifest["metadata"]
        assert meta["namespace"] == "ray-prod"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "ray-gitops"
        assert meta["labels"]["gitops.ray.io/environment"] == "prod"
        assert meta["annotations"]["gitops.ray.io/revision"] == "0123abcdef"
    cluster = rendered.objects[1].manifest
    assert cluster["metadata"]["labels"]["team"] == "ml"
    assert cluster["spec"] == fixture("raycluster.yaml")["spec"]


def test_no_revision_annotation_without_a_revision(tmp_path: Path) -> None:
    tree = write_environment(tmp_path, {"configmap.yaml": dump(CONFIGMAP)})

    (obj,) = render(tree, "prod", "", TARGETS).objects

    assert "annotations" not in obj.manifest["metadata"]
    assert obj.manifest["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "ray-gitops",
                                                  "gitops.ray.io/environment": "prod"}


def test_local_target_puts_objects_in_the_default_namespace(tmp_path: Path) -> None:
    tree = write_environment(tmp_path, {"environment.yaml": LOCAL_ENV,
                                        "cluster.yaml": dump(fixture("raycluster.yaml"))})

    (obj,) = render(tree, "prod", "", TARGETS).objects

    assert (obj.ref.namespace, obj.manifest["metadata"]["namespace"]) == ("default", "default")


def test_list_environments_finds_only_directories_with_environment_yaml(tmp_path: Path) -> None:
    write_environment(tmp_path, {}, name="prod")
    write_environment(tmp_path, {}, name="staging")
    (tmp_path / "environments" / "draft").mkdir()
    (tmp_path / "environments" / "draft" / "cluster.yaml").write_text(dump(fixture("raycluster.yaml")))
    (tmp_path / "environments" / "team" / "nested").mkdir(parents=True)
    (tmp_path / "environments" / "team" / "nested" / "environment.yaml").write_text(LOCAL_ENV)
    (tmp_path / "environments" / "environment.yaml").write_text(LOCAL_ENV)

    assert list_environments(DirectoryTree(tmp_path)) == ["prod", "staging"]


def test_a_rayservice_renders_on_the_local_target_and_an_incremental_upgrade_warns(tmp_path: Path) -> None:
    service = edited("rayservice.yaml", {"spec.upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}})
    [rendered] = render(write_environment(tmp_path, {"environment.yaml": LOCAL_ENV, "serve.yaml": dump(service)}),
                        "prod", "", TARGETS).objects
    assert rendered.warnings == ("spec.upgradeStrategy.type: NewClusterWithIncrementalUpgrade shifts traffic through "
                                 "a Gateway on Kubernetes; the local target has none and switches it at once when the "
                                 "new cluster is ready (as NewCluster)",)
