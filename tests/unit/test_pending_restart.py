"""A pod-template change applied without a restart is reported as a pending restart (in `status`) for as
long as the target shows nodes of that group started before the change."""
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


@pytest.fixture
def env(remote: GitRemote, tmp_path: Path):
    target = MemoryTarget()
    create = target.apply

    def apply(item: PlanItem, context: ApplyContext) -> Outcome:  # as real targets report an in-place update
        outcome = create(item, context)
        return Outcome.CONFIGURED if item.action == Action.UPDATE else outcome

    target.apply = apply  # type: ignore[method-assign]
    source = GitSource(remote.url, "main", tmp_path / "cache", Metrics(CollectorRegistry()).git_request)
    reconciler = pipeline(source, tmp_path / "state", target)
    remote.write("environments/a/environment.yaml", (TESTDATA / "environment-local.yaml").read_text().replace(
        "name: e2e", "name: a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    remote.commit("a cluster")
    reconciler.reconcile("a", source.fetch())

    def commit(text: str) -> dict:
        remote.write("environments/a/raycluster.yaml", text)
        remote.commit("change")
        return reconcile()

    def reconcile() -> dict:
        reconciler.reconcile("a", source.fetch())
        state = reconciler.ledger.state("a")
        assert state is not None
        return dict(state.detail["clusters"]["demo"].get("pendingRestart") or {})

    return target, commit, reconcile


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
