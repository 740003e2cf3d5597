"""A pod-template change applied without a restart is reported as a pending restart (in `status`) for as
long as the target shows nodes of that group started before the change; a RayService's cluster change under
`upgradeStrategy: None`, until another cluster is active."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import Action, ObjectRef, Outcome, PlanItem
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.target import ApplyContext
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline

TESTDATA = Path(__file__).parent.parent / "testdata"
CLUSTER = ObjectRef("ray.io", "RayCluster", "default", "demo")


def cluster_yaml(worker_image: str = "rayproject/ray:2.60.0", head_image: str = "rayproject/ray:2.60.0",
                 replicas: int = 1) -> str:
    text = (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas))
    head, worker = text.split("workerGroupSpecs:")
    return head.replace("rayproject/ray:2.60.0", head_image) + "workerGroupSpecs:" + worker.replace(
        "rayproject/ray:2.60.0", worker_image)


SERVICE = ObjectRef("ray.io", "RayService", "default", "serve")


def service_yaml(worker_image: str = "rayproject/ray:2.60.0", strategy: str = "None") -> str:
    text = (TESTDATA / "unit" / "rayservice.yaml").read_text().replace(
        "ray-worker, image: rayproject/ray:2.60.0", f"ray-worker, image: {worker_image}")
    return text.replace("spec:\n", f"spec:\n  upgradeStrategy: {{type: {strategy}}}\n", 1)


def memory_environment(remote: GitRemote, tmp_path: Path, file: str, text: str):
    """Environment `a` with one object (`file`: `text`) on a memory target that reports updates as real targets do
    (configured, the live status kept); `commit(text)` changes it and reconciles, `reconcile()` returns the
    ledger's detail."""
    target = MemoryTarget()
    create = target.apply

    def apply(item: PlanItem, context: ApplyContext) -> Outcome:
        before = target.objects.get(item.ref)
        outcome = create(item, context)
        if item.action != Action.UPDATE or before is None:
            return outcome
        target.objects[item.ref] = dataclasses.replace(target.objects[item.ref], status=before.status)
        return Outcome.CONFIGURED

    target.apply = apply  # type: ignore[method-assign]
    source = GitSource(remote.url, "main", tmp_path / "cache", Metrics(CollectorRegistry()).git_request)
    reconciler = pipeline(source, tmp_path / "state", target)
    remote.write("environments/a/environment.yaml", (TESTDATA / "environment-local.yaml").read_text().replace(
        "name: e2e", "name: a"))

    def commit(text: str) -> dict:
        remote.write(f"environments/a/{file}", text)
        remote.commit("change")
        return reconcile()

    def reconcile() -> dict:
        reconciler.reconcile("a", source.fetch())
        state = reconciler.ledger.state("a")
        assert state is not None and state.sync_status.value == "Synced", state
        return state.detail

    commit(text)
    return target, commit, reconcile


@pytest.fixture
def env(remote: GitRemote, tmp_path: Path):
    target, commit, reconcile = memory_environment(remote, tmp_path, "raycluster.yaml", cluster_yaml())

    def pending(detail: dict) -> dict:
        return dict(detail["clusters"]["demo"].get("pendingRestart") or {})

    return target, lambda text: pending(commit(text)), lambda: pending(reconcile())


@pytest.fixture
def service_env(remote: GitRemote, tmp_path: Path):
    target, commit, reconcile = memory_environment(remote, tmp_path, "rayservice.yaml", service_yaml())
    serving(target, "a_serve-1")

    def pending(detail: dict) -> dict:
        return dict(detail["services"]["serve"].get("pendingRestart") or {})

    return target, lambda text: pending(commit(text)), lambda: pending(reconcile())


def serving(target: MemoryTarget, cluster: str) -> None:
    """The target reports `cluster` as the RayService's active cluster."""
    target.objects[SERVICE] = dataclasses.replace(target.objects[SERVICE], status={
        "activeServiceStatus": {"rayClusterName": cluster, "applicationStatuses": {}}})


def nodes_started(target: MemoryTarget, **oldest: float) -> None:
    """The target reports when the oldest node of each group started."""
    target.objects[CLUSTER] = dataclasses.replace(target.objects[CLUSTER], oldest_nodes=oldest)


def test_a_worker_template_change_is_pending_until_the_groups_nodes_are_newer(env) -> None:
    target, commit, reconcile = env
    before = time.time()
    pending = commit(cluster_yaml(worker_image="rayproject/ray:2.61.0"))
    assert list(pending) == ["cpu"] and before <= pending["cpu"] <= time.time()
    assert reconcile() == pending, "kept by a cycle that changes nothing"
    assert commit(cluster_yaml(worker_image="rayproject/ray:2.61.0", replicas=2)) == pending, (
        "kept by an in-place change")

    nodes_started(target, headgroup=pending["cpu"] - 3600, cpu=pending["cpu"] - 10)
    assert reconcile() == pending, "a cpu node is older than the change"
    nodes_started(target, headgroup=pending["cpu"] - 3600, cpu=pending["cpu"] + 1)
    assert reconcile() == {}, "every cpu node started after the change; the head group was not changed"


def test_a_head_template_change_without_node_ages_lasts_until_the_cluster_is_recreated(env) -> None:
    target, commit, reconcile = env
    pending = commit(cluster_yaml(head_image="rayproject/ray:2.61.0"))
    assert list(pending) == ["headgroup"]
    assert reconcile() == pending

    del target.objects[CLUSTER]  # gone: recreated by the next reconcile
    assert reconcile() == {}


def test_status_prints_the_pending_restart(env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.commands.cli import main
    target, commit, reconcile = env
    commit(cluster_yaml(worker_image="rayproject/ray:2.61.0"))
    assert main(["status", "--state-dir", str(tmp_path / "state")]) == 0
    assert "RayCluster demo: pending restart: cpu still run the old template (changed " in capsys.readouterr().out


def test_a_rayservice_cluster_change_under_upgrade_strategy_none_is_pending_until_another_cluster_serves(
        service_env) -> None:
    target, commit, reconcile = service_env
    assert reconcile() == {}
    before = time.time()
    pending = commit(service_yaml(worker_image="rayproject/ray:2.61.0"))
    assert list(pending) == ["cpu"] and before <= pending["cpu"] <= time.time()
    assert target.objects[SERVICE].manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
        "spec"]["containers"][0]["image"] == "rayproject/ray:2.61.0", "the next plan is in sync"
    assert reconcile() == pending, "kept by a cycle that changes nothing"

    assert commit(service_yaml(worker_image="rayproject/ray:2.61.0", strategy="NewCluster")) == pending, (
        "kept while the old cluster still serves")
    serving(target, "a_serve-2")  # the new cluster takes the traffic
    assert reconcile() == {}


def test_a_rayservice_cluster_change_under_new_cluster_is_not_pending(service_env) -> None:
    target, commit, reconcile = service_env
    assert commit(service_yaml(worker_image="rayproject/ray:2.61.0", strategy="NewCluster")) == {}


def test_status_prints_the_rayservice_pending_restart(service_env, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.commands.cli import main
    target, commit, reconcile = service_env
    commit(service_yaml(worker_image="rayproject/ray:2.61.0"))
    assert main(["status", "--state-dir", str(tmp_path / "state")]) == 0
    assert "RayService serve: pending restart: cpu still run the old template (changed " in capsys.readouterr().out
