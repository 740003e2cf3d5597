"""One behaviour suite for every target: the same tests (create, update, prune, drift healed, a job run once,
an environment's removal) on the in-memory target, the local target (real Ray processes, marked `ray`) and the
Kubernetes target (the real API server, marked `kube`). Real Git and the real pipeline in each; only what the test
reads of the target, how someone else changes it, and how long a change takes to show differ, behind `Subject`."""
from __future__ import annotations

import contextlib
import copy
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import Action, LiveObject, ObjectRef, job_submission_id
from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import Pipeline, Result
from reconciler.pipeline.render import render
from reconciler.pipeline.source import GitSource
from reconciler.service.config import derived
from reconciler.targets import Cluster, Registry, Runtime
from reconciler.targets.local.runtime import LocalRayCluster
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote, stop_local_clusters
from tests.eventually import eventually
from tests.memory import MemoryTarget, pipeline

ENV = "t"
TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs"}


class Subject:
    """A target under test: the environment's `spec.target`, its pipeline, and what a test reads and does
    beside the daemon (read a live object, edit it as someone else, finish a job as the operator would)."""

    namespace: str
    target_yaml: str
    source: GitSource
    reconciler: Pipeline

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError

    timeout = 10.0  # seconds a change by someone else may take to show, and to be set back

    def edit(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        """Merge `spec` into the live object's spec, as `kubectl edit` would."""
        raise NotImplementedError

    def drift(self) -> int:
        """Someone else moves the RayCluster `demo` (one `cpu` worker in Git) away from Git; the workers it then
        has. Kubernetes and in memory: `kubectl edit` to 4 replicas."""
        self.edit("RayCluster", "demo", {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 4}]})
        return 4

    def run(self, name: str) -> str:
        """The run id of the live RayJob `name`."""
        raise NotImplementedError

    def finish(self, kind: str, name: str, run: str) -> None:
        """The job's run `run` ended successfully (the operator writes the status)."""
        raise NotImplementedError

    def delete(self, kind: str, name: str) -> None:
        """Someone else (a finished RayJob's TTL) deletes the object."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Memory(Subject):
    def __init__(self, source: GitSource, state: Path) -> None:
        self.namespace, self.target_yaml, self.source = "default", "{local: {}}", source
        self.target = MemoryTarget()
        self.reconciler = pipeline(source, state, self.target)

    def _ref(self, kind: str, name: str) -> ObjectRef:
        return ObjectRef("" if kind == "ConfigMap" else "ray.io", kind, self.namespace, name)

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.target.objects.get(self._ref(kind, name))
        return found.manifest if found else None

    def edit(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        ref = self._ref(kind, name)
        edited = copy.deepcopy(self.target.objects[ref].manifest)
        edited["spec"] = merged(edited["spec"], spec)
        edited["metadata"]["managedFields"] = [{"manager": "kubectl-edit", "operation": "Update",
                                                "fieldsV1": {"f:spec": {}}}]
        self.target.objects[ref] = LiveObject(ref, edited, self.target.objects[ref].status)

    def run(self, name: str) -> str:
        return str(self.target.objects[self._ref("RayJob", name)].status["jobId"])

    def finish(self, kind: str, name: str, run: str) -> None:
        pass  # the in-memory target's jobs end as they are submitted

    def delete(self, kind: str, name: str) -> None:
        del self.target.objects[self._ref(kind, name)]


class Kubernetes(Subject):
    def __init__(self, source: GitSource, state: Path, plane: Any, namespace: str) -> None:
        self.namespace, self.target_yaml = namespace, f"{{kubernetes: {{namespace: {namespace}}}}}"
        self.source = source
        metrics = Metrics(CollectorRegistry())
        self.targets = Registry(Runtime(state, metrics, clusters={
            "default": Cluster("default", str(plane.kubeconfig), plane.context)},
            ledger_key=derived(b"the-installation-key-of-at-least-32-bytes", "ledger-copies")))
        self.reconciler = Pipeline(source, Ledger(state), metrics, self.targets, checkouts=state / "checkouts")
        self.api_client = plane.api_client()
        self.core, self.custom = client.CoreV1Api(self.api_client), client.CustomObjectsApi(self.api_client)

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        found: Any
        try:
            if kind == "ConfigMap":
                found = self.api_client.sanitize_for_serialization(
                    self.core.read_namespaced_config_map(name, self.namespace))
            else:
                found = self.custom.get_namespaced_custom_object("ray.io", "v1", self.namespace, PLURALS[kind], name)
            return dict(found)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def edit(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        live = self.live(kind, name)
        assert live is not None
        self.custom.patch_namespaced_custom_object(  # workerGroupSpecs is atomic: the whole list, edited
            "ray.io", "v1", self.namespace, PLURALS[kind], name, {"spec": merged(live["spec"], spec)},
            field_manager="kubectl-edit", _content_type="application/merge-patch+json")

    def run(self, name: str) -> str:
        live = self.live("RayJob", name)
        assert live is not None
        return str(live["spec"]["jobId"])

    def delete(self, kind: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("ray.io", "v1", self.namespace, PLURALS[kind], name)

    def finish(self, kind: str, name: str, run: str) -> None:
        self.custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", self.namespace, PLURALS[kind], name,
            {"status": {"jobId": run, "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}})

    def close(self) -> None:
        self.targets.close()
        self.api_client.close()


class Local(Subject):
    """The local target: real Ray clusters (the live state is what the target observes of them)."""

    timeout = 120.0  # Ray reports a killed worker node dead, and starts its replacement, within this

    def __init__(self, source: GitSource, state: Path) -> None:
        self.namespace, self.target_yaml, self.source, self.state = "default", "{local: {}}", source, state
        self.target = LocalTarget(state)
        self.reconciler = pipeline(source, state, self.target)

    def _ref(self, kind: str, name: str) -> ObjectRef:
        return ObjectRef("" if kind == "ConfigMap" else "ray.io", kind, self.namespace, name)

    def _observed(self, ref: ObjectRef) -> LiveObject | None:
        """What the target observes of `ref` (rendered as the environment was last applied: it may be gone)."""
        revision = self.source.revision(self.reconciler.ledger.load(ENV).last_applied or self.source.fetch().sha)
        rendered = render(revision.tree, ENV, revision.sha, self.reconciler.targets)
        return self.target.observe(rendered, {ref}, frozenset()).live.get(ref)

    def live(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self._observed(self._ref(kind, name))
        return found.manifest if found else None

    def drift(self) -> int:
        """A worker node of `demo` dies (killed by someone else): Ray reports none left."""
        cluster = LocalRayCluster.adopt(f"{ENV}_demo", self.state / "local" / "clusters")
        assert cluster is not None
        [worker] = cluster.worker_pids()["cpu"]
        os.killpg(worker, signal.SIGKILL)
        return 0

    def run(self, name: str) -> str:
        found = self._observed(self._ref("RayJob", name))
        assert found is not None
        return str(found.status["jobId"])

    def finish(self, kind: str, name: str, run: str) -> None:  # the job really runs: wait for Ray to end it
        eventually(lambda: (self._observed(self._ref(kind, name)) or LiveObject(self._ref(kind, name), {}, {}))
                   .status.get("jobStatus") == "SUCCEEDED", self.timeout, 1, f"the run {run} to succeed")

    def delete(self, kind: str, name: str) -> None:
        self.target.store.forget(ENV, self._ref(kind, name))

    def close(self) -> None:
        self.target.close(workloads=True)
        stop_local_clusters(self.state)


def merged(spec: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """`spec` with `change` merged in; lists of worker groups merged by groupName."""
    out = copy.deepcopy(spec)
    for key, value in change.items():
        if key == "workerGroupSpecs":
            groups = {g["groupName"]: g for g in out[key]}
            for group in value:
                groups[group["groupName"]].update(group)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(params=["memory", pytest.param("local", marks=pytest.mark.ray),
                        pytest.param("kubernetes", marks=pytest.mark.kube)])
def subject(request: pytest.FixtureRequest, remote: GitRemote, tmp_path: Path) -> Iterator[Subject]:
    source = GitSource(remote.url, "main", tmp_path / "git", Metrics(CollectorRegistry()).git_request)
    made: Subject
    if request.param == "memory":
        made = Memory(source, tmp_path / "state")
    elif request.param == "local":
        made = Local(source, tmp_path / "state")
    else:
        made = Kubernetes(source, tmp_path / "state", request.getfixturevalue("kube_control_plane"),
                          request.getfixturevalue("kube_namespace"))
    remote.write(f"environments/{ENV}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: {ENV}}}\nspec: {{target: {made.target_yaml}, interval: 5s, prune: true}}\n")
    try:
        yield made
    finally:
        made.close()


def cluster(replicas: int = 1) -> str:
    return (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas))


SETTINGS = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n"


def reconcile(subject: Subject, remote: GitRemote, message: str | None = None) -> Result:
    """Commit what the test wrote (if `message`), then reconcile the environment at Git's head."""
    if message:
        remote.commit(message)
    result = subject.reconciler.reconcile(ENV, subject.source.fetch())
    assert result.result != "error", result.message
    return result


def actions(result: Result) -> list[tuple[str, str, Action]]:
    return sorted((item.ref.kind, item.ref.name, item.action) for item, _ in result.outcomes)


def replicas(subject: Subject) -> int:
    live = subject.live("RayCluster", "demo")
    assert live is not None
    return int(live["spec"]["workerGroupSpecs"][0]["replicas"])


def test_objects_in_git_are_created_with_the_environment_label(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster())
    remote.write(f"environments/{ENV}/settings.yaml", SETTINGS)
    result = reconcile(subject, remote, "a cluster and its settings")
    assert (result.result, result.sync_status) == ("success", "Synced")
    assert actions(result) == [("ConfigMap", "settings", Action.CREATE), ("RayCluster", "demo", Action.CREATE)]
    settings = subject.live("ConfigMap", "settings")
    assert settings is not None and settings["data"] == {"mode": "fast"}
    assert settings["metadata"]["labels"]["gitops.ray.io/environment"] == ENV
    assert replicas(subject) == 1
    assert reconcile(subject, remote).result == "noop"


def test_a_change_in_git_updates_the_object_in_place(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster(1))
    reconcile(subject, remote, "one worker")
    first = subject.live("RayCluster", "demo")
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster(3))
    result = reconcile(subject, remote, "three workers")
    assert actions(result) == [("RayCluster", "demo", Action.UPDATE)]
    assert replicas(subject) == 3
    after = subject.live("RayCluster", "demo")
    assert first is not None and after is not None
    assert after["metadata"].get("uid") == first["metadata"].get("uid")  # the same object, not recreated


def test_an_object_removed_from_git_is_pruned_and_only_it(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster())
    remote.write(f"environments/{ENV}/settings.yaml", SETTINGS)
    reconcile(subject, remote, "a cluster and its settings")
    remote.remove(f"environments/{ENV}/settings.yaml")
    result = reconcile(subject, remote, "no settings")
    assert actions(result) == [("ConfigMap", "settings", Action.DELETE)]
    assert subject.live("ConfigMap", "settings") is None
    assert subject.live("RayCluster", "demo") is not None


def test_a_hand_edit_is_set_back_to_git(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster(1))
    reconcile(subject, remote, "one worker")
    drifted = subject.drift()
    eventually(lambda: replicas(subject) == drifted, subject.timeout, 0.2, "the change to show")
    healed: list[Result] = []

    def heals() -> bool:  # Kubernetes sees the edit through its watch, Ray a dead node, a moment later
        healed.append(reconcile(subject, remote))
        return replicas(subject) == 1
    eventually(heals, subject.timeout, 0.1, "the hand edit to be set back")
    assert any(("RayCluster", "demo", Action.UPDATE) in actions(result) for result in healed)
    assert reconcile(subject, remote).result == "noop"


def test_a_job_runs_once_even_when_its_finished_object_is_deleted(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster())
    remote.write(f"environments/{ENV}/job.yaml", (TESTDATA / "rayjob.yaml").read_text())
    result = reconcile(subject, remote, "a cluster and a job on it")
    assert ("RayJob", "count", Action.SUBMIT) in actions(result)
    run = subject.run("count")
    assert run == job_submission_id(ENV, "count", yaml.safe_load((TESTDATA / "rayjob.yaml").read_text()))

    subject.finish("RayJob", "count", run)

    def recorded() -> bool:  # the Kubernetes target sees the status through its watch, a moment later
        reconcile(subject, remote)
        ledger = subject.reconciler.ledger.load(ENV)
        return ledger is not None and ledger.finished == {run: "succeeded"}
    eventually(recorded, subject.timeout, 0.1, "the run to be recorded as finished")
    subject.delete("RayJob", "count")  # as its TTL does
    assert reconcile(subject, remote).outcomes == []  # finished: not submitted again
    assert subject.live("RayJob", "count") is None

    remote.write(f"environments/{ENV}/settings.yaml", SETTINGS)  # a new revision: the job is still done
    result = reconcile(subject, remote, "settings")
    assert actions(result) == [("ConfigMap", "settings", Action.CREATE)]
    assert subject.live("RayJob", "count") is None


def test_an_environment_removed_from_git_has_its_objects_pruned(subject: Subject, remote: GitRemote) -> None:
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster())
    remote.write(f"environments/{ENV}/settings.yaml", SETTINGS)
    reconcile(subject, remote, "a cluster and its settings")
    remote.repo.git.rm("-r", "-q", f"environments/{ENV}")
    gone = remote.commit("the environment leaves")
    result = subject.reconciler.remove(ENV, subject.source.fetch())
    assert (result.sync_status, result.message) == ("Removed", f"removed from Git at {gone[:12]}: 2 object(s) pruned")
    assert subject.live("RayCluster", "demo") is None and subject.live("ConfigMap", "settings") is None


@pytest.mark.kube
def test_on_kubernetes_a_job_refused_for_a_missing_namespace_is_submitted_once_it_exists(
        remote: GitRemote, tmp_path: Path, kube_control_plane: Any) -> None:
    namespace = f"later-{secrets.token_hex(4)}"  # not made yet: the API server refuses the objects (404)
    source = GitSource(remote.url, "main", tmp_path / "git", Metrics(CollectorRegistry()).git_request)
    subject = Kubernetes(source, tmp_path / "state", kube_control_plane, namespace)
    remote.write(f"environments/{ENV}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: {ENV}}}\nspec: {{target: {subject.target_yaml}, prune: true}}\n")
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster())
    remote.write(f"environments/{ENV}/job.yaml", (TESTDATA / "rayjob.yaml").read_text())
    remote.commit("a cluster and a job in a namespace that comes later")
    try:
        refused = subject.reconciler.reconcile(ENV, source.fetch())
        assert refused.result == "error" and "not found" in refused.message
        assert subject.reconciler.ledger.load(ENV).finished == {}  # not taken for a run deleted unseen

        subject.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        eventually(lambda: reconcile(subject, remote) and subject.live("RayJob", "count"), subject.timeout, 0.2,
                   "the RayJob to be submitted")
        run = job_submission_id(ENV, "count", yaml.safe_load((TESTDATA / "rayjob.yaml").read_text()))
        assert subject.run("count") == run
        assert subject.reconciler.ledger.load(ENV).pending == frozenset({run})
    finally:
        subject.close()
        with kube_control_plane.api_client() as api_client, contextlib.suppress(ApiException):  # made or not
            client.CoreV1Api(api_client).delete_namespace(namespace)
