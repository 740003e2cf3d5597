"""KubeRay's own samples as a corpus: what a KubeRay user copies first must validate on both targets.

The samples are read at test time from the pinned KubeRay module in the Go module cache
(`ray-operator/config/samples/`, as the CRDs are read: `tests/controlplane/versions.env`), never committed.
Each file that holds a Ray object is one environment: its RayCluster, RayJob, RayService, RayCronJob, ConfigMap
and Secret objects (the rest, an Ingress or a Gateway, is not ray-gitops'), through the one loader of
`ray-gitops validate`, once with a `kubernetes` target and once with a `local` one. The local target's caps
follow the machine's CPUs, so they are taken as on a 2-CPU laptop. The files refused are listed below, each
with why; every other file must validate.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from reconciler.errors import InvalidEnvironment
from reconciler.pipeline.render import render
from reconciler.pipeline.source import DirectoryTree
from reconciler.targets.local import limits
from tests.memory import TARGETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controlplane"))
from kube_controlplane import module_dir, read_versions  # noqa: E402

KEPT = {"RayCluster", "RayJob", "RayService", "RayCronJob", "ConfigMap", "Secret"}
TARGET = {"kubernetes": "{kubernetes: {namespace: default}}", "local": "{local: {}}"}
STABLE_NAME = "metadata.generateName: a GitOps object needs a stable metadata.name"
BOTH, LOCAL = ("kubernetes", "local"), ("local",)
# file -> (the targets that refuse it, the start of the error it gets)
REFUSED = {
    # A name made up at each create: ray-gitops could not find the object again to diff, prune, or not re-run it.
    "pytorch-resnet-image-classifier/ray-job.pytorch-image-classifier.yaml": (BOTH, STABLE_NAME),
    "pytorch-text-classifier/ray-job.pytorch-distributed-training.yaml": (BOTH, STABLE_NAME),
    "ray-job.kueue-toy-sample.yaml": (BOTH, STABLE_NAME),
    # InteractiveMode waits for a person to submit the job and set spec.jobId; ray-gitops names every run itself.
    "ray-job.interactive-mode.yaml": (BOTH, "spec.jobId: is set by ray-gitops"),
    # Its own submitter Pod runs the job (no entrypoint): fine for KubeRay, but there are no Pods locally.
    "ray-job.light-weight-submitter.yaml": (LOCAL, "spec.submitterPodTemplate: its container's own command cannot "
                                                   "run on the local target"),
    # 64 TPU hosts per replica: 64 Ray nodes, which would really start (not a bound, so not clamped).
    "ray-cluster.tpu-v6e-256-multihost.yaml": (LOCAL, "spec.workerGroupSpecs[0].replicas: 1 x numOfHosts 64 = 64 "
                                                      "workers exceeds the local target's limit"),
    "ray-job.tpu-v6e-256-multihost.yaml": (LOCAL, "spec.rayClusterSpec.workerGroupSpecs[0].replicas: 1 x numOfHosts "
                                                  "64 = 64 workers exceeds the local target's limit"),
}


@pytest.fixture(scope="module")
def samples() -> dict[str, list[dict]]:
    """file (relative to config/samples/) -> its kept objects, for every file that holds a Ray object."""
    if shutil.which("go") is None:
        pytest.skip("needs Go: the samples come from the KubeRay module in the Go module cache")
    root = module_dir(f"github.com/ray-project/kuberay/ray-operator@v{read_versions()['KUBERAY_VERSION']}")
    found = {}
    for path in sorted((root / "config" / "samples").rglob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") in KEPT]
        if any(d["kind"].startswith("Ray") for d in docs):
            found[path.relative_to(root / "config" / "samples").as_posix()] = docs
    return found


def validate(tmp_path: Path, target: str, docs: list[dict]) -> tuple[str, tuple[str, ...]]:
    """("" or the first error, the warnings) of one sample file as environment `s` on `target`."""
    directory = tmp_path / "environments" / "s"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "environment.yaml").write_text("apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                                                f"metadata: {{name: s}}\nspec: {{target: {TARGET[target]}}}\n")
    (directory / "objects.yaml").write_text(yaml.safe_dump_all(docs))
    try:
        rendered = render(DirectoryTree(tmp_path), "s", "", TARGETS)
    except InvalidEnvironment as exc:
        return str(exc.errors[0]).split(": ", 2)[2], ()
    return "", tuple(w for d in rendered.objects for w in d.warnings)


@pytest.mark.parametrize("target", ["kubernetes", "local"])
def test_kuberays_samples_validate_on_both_targets_but_the_refusals_listed(
        samples: dict[str, list[dict]], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "machine_cpus", lambda: 2)
    results = {name: validate(tmp_path, target, docs) for name, docs in samples.items()}

    refused = {name: error for name, (error, _) in results.items() if error}
    expected = {name: why for name, (targets, why) in REFUSED.items() if target in targets}
    assert sorted(refused) == sorted(expected), refused
    assert all(refused[name].startswith(why) for name, why in expected.items()), refused
    assert len(samples) == 75 and len(samples) - len(refused) == {"kubernetes": 71, "local": 68}[target]
    clamped = [name for name, (_, warnings) in results.items() if any("clamped to 4" in w for w in warnings)]
    assert len(clamped) == {"kubernetes": 0, "local": 39}[target]  # maxReplicas 5 or 10: a warning, not a refusal
