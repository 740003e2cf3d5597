"""The local target through the reconcile stage, on real Ray and real Git (no daemon process)."""
from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.model import Outcome
from reconciler.pipeline.reconcile import Result
from reconciler.pipeline.render import render
from reconciler.targets.local.limits import Limits
from reconciler.targets.local.observe import cluster_name
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.eventually import eventually
from tests.localharness import LocalHarness
from tests.memory import TARGETS, pipeline

pytestmark = pytest.mark.ray
TESTDATA = Path(__file__).parent.parent / "testdata"
ENV = "t"


class Harness(LocalHarness):
    """Environment `t` on the local target, reconciled at once with two neighbours (ConfigMaps)."""

    def __init__(self, remote: GitRemote, state: Path) -> None:
        super().__init__(remote, state, ENV)
        remote.write(f"environments/{ENV}/environment.yaml",
                     (TESTDATA / "environment-local.yaml").read_text().replace("name: e2e", f"name: {ENV}"))


@pytest.fixture
def harness(remote: GitRemote, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(remote, tmp_path / "state")
    yield h
    h.close()


def cluster_yaml(replicas: int, memory: str = "1Gi", extra: str = "") -> str:
    text = (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas))
    return text.replace("memory: 1Gi", f"memory: {memory}").replace("spec:\n  headGroupSpec:",
                                                                     f"spec:\n{extra}  headGroupSpec:")


def test_job_with_its_own_cluster_runs_from_working_dir_then_shuts_the_cluster_down(harness: Harness) -> None:
    harness.remote.write("jobs/hello/main.py",
                         "import ray\nray.init()\nprint(ray.get(ray.remote(lambda: 42).remote()))\n")
    harness.remote.write(f"environments/{ENV}/job.yaml", """\
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: hello}
spec:
  entrypoint: python main.py
  runtimeEnvYAML: |
    working_dir: jobs/hello
  shutdownAfterJobFinishes: true
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {num-cpus: "1"}
      template: {spec: {containers: [{name: head, image: rayproject/ray:2.60.0}]}}
""")
    harness.remote.commit("a job with its own cluster")

    first = harness.reconcile()
    run = first.outcomes[0][0].reason.removeprefix("new run ")
    assert [o for _, o in first.outcomes] == [Outcome.SUBMITTED]
    assert harness.cluster(cluster_name(ENV, run)) is not None  # the run's own cluster
    harness.until("the run to succeed", lambda r: r.health_status == "Healthy")

    assert harness.reconciler.ledger.load(ENV).finished == {run: "succeeded"}
    assert harness.cluster(cluster_name(ENV, run)) is None  # shutdownAfterJobFinishes stopped it
    assert harness.reconcile().outcomes == []  # and the finished run is not submitted again


def test_a_dead_worker_is_drift_and_is_replaced_and_a_renamed_group_drains_first(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(1))
    harness.remote.commit("one worker")
    harness.reconcile()
    cluster = harness.cluster(f"{ENV}_demo")
    assert cluster is not None
    [old] = cluster.worker_pids()["cpu"]

    os.killpg(old, signal.SIGKILL)
    harness.until("the worker to be replaced", lambda r: any(o == Outcome.CONFIGURED for _, o in r.outcomes))

    replaced = harness.cluster(f"{ENV}_demo")
    assert replaced is not None and replaced.dashboard.alive_nodes() == {"head": 1, "cpu": 1}
    assert replaced.worker_pids()["cpu"] != [old]
    assert harness.metrics.registry.get_sample_value(
        "ray_gitops_apply_total", {"environment": ENV, "kind": "RayCluster", "action": "update"}) >= 1

    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(1).replace("groupName: cpu",
                                                                                        "groupName: small"))
    harness.remote.commit("the group cpu renamed small")  # cpu drains (its node stops), then leaves the spec
    draining = harness.reconcile()
    assert draining.health_status == "Progressing"
    assert "draining" in harness.reconciler.ledger.state(ENV).detail["clusters"]["demo"]
    done = harness.until("the group cpu out of the spec", lambda r: r.health_status == "Healthy")
    assert done.sync_status == "Synced"
    renamed = harness.cluster(f"{ENV}_demo")
    assert renamed is not None and renamed.dashboard.alive_nodes() == {"head": 1, "small": 1}
    record = harness.state / "local" / "objects" / ENV / "RayCluster.default.demo.json"
    assert [g["groupName"] for g in json.loads(record.read_text())["manifest"]["spec"]["workerGroupSpecs"]] == ["small"]


@pytest.mark.parametrize("extra, outcome, restarted", [
    pytest.param("", Outcome.CONFIGURED, False, id="pending-restart"),
    pytest.param("  upgradeStrategy: {type: Recreate}\n", Outcome.RECREATED, True, id="upgrade-strategy-recreate"),
])
def test_template_change_restarts_nodes_only_when_asked(harness: Harness, extra: str, outcome: Outcome,
                                                        restarted: bool) -> None:
    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(1, extra=extra))
    harness.remote.commit("one worker")
    harness.reconcile()
    before = harness.cluster(f"{ENV}_demo")
    assert before is not None
    gcs, workers = before.gcs_address, before.worker_pids()

    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(1, memory="2Gi", extra=extra))
    harness.remote.commit("more memory per worker")
    result = harness.reconcile()

    [(item, got)] = result.outcomes
    assert got == outcome
    assert ("pending restart" in item.reason) == (not restarted)
    after = harness.cluster(f"{ENV}_demo")
    assert after is not None
    assert (after.gcs_address != gcs) == restarted
    assert (after.worker_pids() != workers) == restarted


def test_a_cron_job_runs_each_slot_once_even_across_a_restart_and_never_from_a_preview(
        harness: Harness, remote: GitRemote) -> None:
    """RayCronJob on real Ray: the daemon schedules it; a preview (what `plan`, `diff` and the status page run)
    with a slot due submits nothing and writes nothing; the slot's run id makes a second submission (here, by a
    fresh target as after a restart) impossible."""
    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(0))
    harness.remote.write(f"environments/{ENV}/cron.yaml", """\
apiVersion: ray.io/v1
kind: RayCronJob
metadata: {name: minutely}
spec:
  schedule: "* * * * *"
  jobTemplate:
    entrypoint: python -c "print('tick')"
    clusterSelector: {ray.io/cluster: demo}
""")
    harness.remote.commit("a job every minute")
    harness.reconcile()
    record = harness.state / "local" / "objects" / ENV / "RayCronJob.default.minutely.json"
    slot = json.loads(record.read_text())
    record.write_text(json.dumps({**slot, "last_slot": slot["last_slot"] - 70}))  # a slot came due meanwhile
    before = record.read_bytes()
    ray = harness.cluster(f"{ENV}_demo")
    assert ray is not None
    import requests

    def submissions() -> list[str]:
        jobs = requests.get(f"{ray.dashboard_url}/api/jobs/", headers=ray.auth_headers, timeout=10).json()
        return [j["submission_id"] for j in jobs if j.get("type") == "SUBMISSION"]

    preview = harness.reconciler.preview(ENV, harness.source.fetch())
    assert preview.changes == [] and record.read_bytes() == before and submissions() == []

    result = harness.until("a scheduled run", lambda r: bool(harness.reconciler.ledger.load(ENV).runs), timeout=100)
    # going back 70 s crosses two minute boundaries one time in six: the older slot is then reported missed
    [run] = [r for r, info in harness.reconciler.ledger.load(ENV).runs.items() if info.result != "missed"]
    assert run.startswith(f"{ENV}-minutely-") and result.sync_status == "Synced"
    restarted = pipeline(harness.source, harness.state, LocalTarget(harness.state), harness.metrics)
    assert restarted.reconcile(ENV, harness.source.fetch()).result != "error"
    harness.until("the run to succeed", lambda r: harness.reconciler.ledger.load(ENV).finished.get(run) == "succeeded",
                  timeout=60)

    assert submissions().count(run) == 1
    assert harness.metrics.registry.get_sample_value("ray_gitops_rayjob_runs_total", {
        "environment": ENV, "job": "minutely", "result": "succeeded"}) >= 1


def test_the_machine_cap_refuses_a_cluster_that_does_not_fit_beside_another(harness: Harness) -> None:
    """Room for two Ray nodes: `demo` (a head) starts; `second` (a head and a worker) would make three, so its
    create fails with the reason and none of its processes start; once `demo` is pruned it starts."""
    harness.target.clusters.limits = Limits(cpus=1, workers_per_group=4, nodes=2)
    harness.remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(0))
    harness.remote.write(f"environments/{ENV}/second.yaml", cluster_yaml(1).replace("name: demo", "name: second"))
    harness.remote.commit("a head, then a head and a worker; room for two nodes")

    result = harness.reconciler.reconcile(ENV, harness.source.fetch())
    assert result.result == "error"
    assert [(item.ref.name, outcome) for item, outcome in result.outcomes] == [("demo", Outcome.CREATED),
                                                                                ("second", Outcome.FAILED)]
    assert (f"Ray cluster {ENV}_second needs 2 Ray nodes (a head and 1 worker), but other local clusters run 1 "
            "and the local target's limit of 2 Ray nodes on this machine") in result.message
    assert harness.cluster(f"{ENV}_demo") is not None and harness.cluster(f"{ENV}_second") is None
    assert not (harness.state / "local" / "clusters" / f"{ENV}_second").exists()  # nothing of it started

    harness.remote.remove(f"environments/{ENV}/raycluster.yaml")
    harness.remote.commit("only second")
    # A reconcile creates before it prunes: the first one after this commit is still refused.
    def second_started() -> Result:
        result = harness.reconciler.reconcile(ENV, harness.source.fetch())
        assert result.health_status == "Healthy", result.message
        return result
    result = eventually(second_started, 120, 1, "second to start")
    assert result.result != "error", result.message
    assert harness.cluster(f"{ENV}_demo") is None
    second = harness.cluster(f"{ENV}_second")
    assert second is not None and second.dashboard.alive_nodes() == {"head": 1, "cpu": 1}


def test_a_max_replicas_above_the_cap_runs_held_at_the_cap_and_is_no_drift(harness: Harness) -> None:
    """`maxReplicas` above the cap per group only warns: the cluster starts, its status and metrics show the cap
    as the group's bound, and the next reconciles find nothing to change."""
    cap = harness.target.clusters.limits.workers_per_group
    harness.remote.write(f"environments/{ENV}/raycluster.yaml",
                         cluster_yaml(0).replace("maxReplicas: 4", "maxReplicas: 1000000"))
    harness.remote.commit("an autoscaler bound above the local cap")

    [(item, outcome)] = harness.reconcile().outcomes
    assert outcome == Outcome.CREATED and f"clamped to {cap}" in item.warnings[0]
    assert harness.metrics.registry.get_sample_value("ray_gitops_raycluster_workers", {
        "environment": ENV, "cluster": "demo", "group": "cpu", "state": "max"}) == cap
    rendered = render(harness.source.fetch().tree, ENV, "", TARGETS)
    live = harness.target.observe(rendered, {item.ref}, frozenset()).live[item.ref]
    assert live.status["maxWorkerReplicas"] == cap
    assert harness.reconcile().outcomes == [] and harness.reconcile().outcomes == []
