"""The local target's caps: at validation (through render, the one loader: an error for what starts nodes, a
warning and a clamp for `maxReplicas`) and at apply time (`Clusters.claim`, without starting Ray: a refused claim
starts nothing)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.commands.show import _print_plan
from reconciler.errors import PermanentError
from reconciler.metrics import Metrics
from reconciler.model import Action, LiveObject, ObjectRef, Outcome, PlanItem, RenderedEnvironment
from reconciler.pipeline.planner import plan
from reconciler.pipeline.render import render
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.target import ApplyContext
from reconciler.targets.local.clusters import Clusters
from reconciler.targets.local.limits import Limits, clamp, cluster_nodes, machine_cpus
from reconciler.targets.local.nodes import start_ticks
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.memory import TARGETS, MemoryTarget, pipeline
from tests.unit.test_render import TESTDATA, dump, edited, errors_of, write_environment

HERE = Limits.of_machine()
GROUP = HERE.workers_per_group
WHY = f"(max(4, 2 per CPU) with {HERE.cpus} CPUs; spec.policy.maxWorkersPerGroup sets another)"


def local_environment(policy: int | None = None) -> str:
    doc = yaml.safe_load((TESTDATA / "environment-local.yaml").read_text())
    doc["metadata"]["name"] = "x"
    if policy is not None:
        doc["spec"]["policy"] = {"maxWorkersPerGroup": policy}
    return yaml.safe_dump(doc)


def local_errors(tmp_path: Path, *docs: dict[str, Any], policy: int | None = None) -> list[str]:
    tree = write_environment(tmp_path, {"environment.yaml": local_environment(policy), "c.yaml": dump(*docs)}, "x")
    return errors_of(tree, "x")


def small_cluster(**edits: Any) -> dict[str, Any]:
    """The unit RayCluster with only its first worker group (`cpu`), with edits as dotted paths."""
    doc = edited("raycluster.yaml", {})
    doc["spec"]["workerGroupSpecs"] = doc["spec"]["workerGroupSpecs"][:1]
    for path, value in edits.items():
        *parents, last = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return doc


def test_defaults_follow_the_cpus() -> None:
    assert machine_cpus() >= 1
    assert Limits.of_machine(1) == Limits(1, 4, 8)
    assert Limits.of_machine(2) == Limits(2, 4, 8)
    assert Limits.of_machine(16) == Limits(16, 32, 64)


def test_an_absurd_replicas_is_a_validation_error_naming_file_object_and_field(tmp_path: Path) -> None:
    cluster = small_cluster(**{"spec.workerGroupSpecs.0.replicas": 2147483647,
                               "spec.workerGroupSpecs.0.maxReplicas": 2147483647})
    assert local_errors(tmp_path, cluster) == [
        f"environments/x/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].replicas: 2147483647 exceeds "
        f"the local target's limit of {GROUP} workers per group {WHY}"]


@pytest.mark.parametrize("field", ["replicas", "minReplicas"])
def test_what_would_start_more_nodes_than_the_cap_stays_an_error(tmp_path: Path, field: str) -> None:
    cluster = small_cluster(**{f"spec.workerGroupSpecs.0.{field}": GROUP + 1,
                               "spec.workerGroupSpecs.0.maxReplicas": GROUP + 1})
    assert local_errors(tmp_path, cluster) == [
        f"environments/x/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].{field}: {GROUP + 1} exceeds "
        f"the local target's limit of {GROUP} workers per group {WHY}"]


def test_a_max_replicas_above_the_cap_is_clamped_with_a_warning_in_render_plan_and_expected(tmp_path: Path) -> None:
    """`maxReplicas` only bounds the autoscaler: above the cap it renders with a warning, each plan item of the
    object carries it, and the local target holds (and reports) the cap, so the clamp is never drift."""
    cluster = small_cluster(**{"spec.workerGroupSpecs.0.maxReplicas": 10**6})
    hosts = edited("rayjob.yaml", {})
    hosts["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=1, minReplicas=0, maxReplicas=GROUP,
                                                                  numOfHosts=2)
    tree = write_environment(tmp_path, {"environment.yaml": local_environment(), "c.yaml": dump(cluster, hosts)}, "x")
    rendered = render(tree, "x", "", TARGETS)
    demo, job = rendered.objects
    assert demo.warnings == (f"spec.workerGroupSpecs[0].maxReplicas: 1000000 is above the local target's limit of "
                             f"{GROUP} workers per group {WHY}: clamped to {GROUP} (maxReplicas only bounds the "
                             "autoscaler)",)
    assert job.warnings == (f"spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas: {GROUP} x numOfHosts 2 = "
                            f"{GROUP * 2} workers is above the local target's limit of {GROUP} workers per group "
                            f"{WHY}: clamped to {GROUP // 2} (maxReplicas only bounds the autoscaler)",)

    target = LocalTarget(tmp_path / "state")
    held = target.expected(rendered, {demo.ref: LiveObject(demo.ref, {})})[demo.ref]
    assert held["spec"]["workerGroupSpecs"][0]["maxReplicas"] == GROUP
    assert demo.manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 10**6  # Git's value is kept as it is
    [created] = plan(replace(rendered, objects=(demo,)), {}, frozenset(), {})
    assert (created.action, created.warnings) == (Action.CREATE, demo.warnings)
    [same] = plan(replace(rendered, objects=(demo,)), {demo.ref: LiveObject(demo.ref, held)}, frozenset({demo.ref}),
                  {}, expected={demo.ref: held})
    assert (same.action, same.warnings) == (Action.NOOP, demo.warnings)
    assert clamp(held, GROUP) is held and clamp(hosts, 1) is hosts  # within the cap, and a RayJob: as they are


def test_the_cap_holds_inside_a_rayjobs_cluster_and_counts_numofhosts(tmp_path: Path) -> None:
    job = edited("rayjob.yaml", {})
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group.update(replicas=GROUP // 2 + 1, numOfHosts=2, minReplicas=0, maxReplicas=1)
    n = (GROUP // 2 + 1) * 2
    assert local_errors(tmp_path, job) == [
        f"environments/x/c.yaml#0: RayJob/{job['metadata']['name']}: spec.rayClusterSpec.workerGroupSpecs[0]"
        f".replicas: {GROUP // 2 + 1} x numOfHosts 2 = {n} workers exceeds the local target's limit of {GROUP} "
        f"workers per group {WHY}"]


def test_the_cap_of_the_machine_holds_for_one_object(tmp_path: Path) -> None:
    groups = [{**small_cluster()["spec"]["workerGroupSpecs"][0], "groupName": f"g{i}", "replicas": GROUP,
               "minReplicas": 0, "maxReplicas": GROUP} for i in range(HERE.nodes // GROUP + 1)]
    cluster = small_cluster(**{"spec.workerGroupSpecs": groups})
    nodes = 1 + GROUP * len(groups)
    assert local_errors(tmp_path, cluster) == [
        f"environments/x/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs: {nodes} Ray nodes (a head and "
        f"{nodes - 1} workers) exceed the local target's limit of {HERE.nodes} Ray nodes on this machine "
        f"(max(8, 4 per CPU) with {HERE.cpus} CPUs)"]


def test_policy_sets_the_cap_per_group_but_not_the_machines(tmp_path: Path) -> None:
    low = small_cluster(**{"spec.workerGroupSpecs.0.replicas": 1, "spec.workerGroupSpecs.0.minReplicas": 3})
    del low["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert local_errors(tmp_path, low, policy=2) == [
        "environments/x/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs[0].minReplicas: 3 exceeds the local "
        "target's limit of 2 workers per group (spec.policy.maxWorkersPerGroup)"]
    raised = GROUP + 1  # above the default, within the policy and the machine
    assert render_names(tmp_path, small_cluster(**{"spec.workerGroupSpecs.0.replicas": raised,
                                                   "spec.workerGroupSpecs.0.maxReplicas": raised}), policy=raised)
    many = HERE.nodes + 1
    big = small_cluster(**{"spec.workerGroupSpecs.0.replicas": many, "spec.workerGroupSpecs.0.maxReplicas": many})
    assert local_errors(tmp_path, big, policy=10**6) == [
        f"environments/x/c.yaml#0: RayCluster/demo: spec.workerGroupSpecs: {many + 1} Ray nodes (a head and {many} "
        f"workers) exceed the local target's limit of {HERE.nodes} Ray nodes on this machine "
        f"(max(8, 4 per CPU) with {HERE.cpus} CPUs)"]


def render_names(tmp_path: Path, *docs: dict[str, Any], policy: int | None = None) -> list[str]:
    tree = write_environment(tmp_path, {"environment.yaml": local_environment(policy), "c.yaml": dump(*docs)}, "x")
    return [o.ref.name for o in render(tree, "x", "", TARGETS).objects]


def test_a_cluster_within_the_caps_renders(tmp_path: Path) -> None:
    ok = small_cluster(**{"spec.workerGroupSpecs.0.replicas": GROUP, "spec.workerGroupSpecs.0.maxReplicas": GROUP})
    assert render_names(tmp_path, ok) == ["demo"]


def test_the_kubernetes_target_has_no_such_cap(tmp_path: Path) -> None:
    big = edited("raycluster.yaml", {"spec.workerGroupSpecs.0.replicas": 8, "spec.workerGroupSpecs.0.numOfHosts": 64})
    assert len(render(write_environment(tmp_path, {"c.yaml": dump(big)}), "prod", "", TARGETS).objects) == 1


def spec(workers: int) -> dict[str, Any]:
    return {"headGroupSpec": {}, "workerGroupSpecs": [{"groupName": "cpu", "replicas": workers}]}


def test_claims_refuse_what_does_not_fit_beside_the_other_clusters(tmp_path: Path) -> None:
    clusters = Clusters(tmp_path, Limits(1, 4, 5))
    assert cluster_nodes(spec(2)) == 3
    clusters.claim("a", spec(2))
    with pytest.raises(PermanentError, match=r"^Ray cluster b needs 3 Ray nodes \(a head and 2 workers\), but other "
                                             r"local clusters run 3 and the local target's limit of 5 Ray nodes on "
                                             r"this machine \(.*\) leaves room for 2$"):
        clusters.claim("b", spec(2))
    clusters.claim("b", spec(1))  # 3 + 2 = 5
    with pytest.raises(PermanentError):
        clusters.claim("a", spec(3))  # growing a beyond the cap
    clusters.claim("a", spec(0))  # shrinking is never refused
    clusters.claim("b", spec(2))  # 1 + 3 = 4
    clusters.stop("a")  # releases a's claim (no such cluster runs)
    clusters.claim("b", spec(3))  # 4 alone
    assert clusters.nodes_in_use() == 4 and clusters.nodes_in_use(exclude="b") == 0


@pytest.fixture
def adopted_record(tmp_path: Path) -> Iterator[Path]:
    """A cluster record on disk whose head and two workers are live processes (as after a daemon restart)."""
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
                for _ in range(3)]
    try:
        def node(p: subprocess.Popen[bytes], group: str) -> dict[str, Any]:
            return {"group": group, "token": str(p.pid), "pid": p.pid, "start_ticks": start_ticks(p.pid),
                    "log": "", "ports": {"port": 1, "dashboard-port": 2}}
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "cluster.json").write_text(json.dumps({
            "name": "old", "token": "t", "temp_dir": str(tmp_path / "nothing"), "dashboard_url": "", "gcs_address": "",
            "head": node(sleepers[0], "head"), "workers": [node(s, "cpu") for s in sleepers[1:]]}))
        yield tmp_path
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


def test_clusters_adopted_from_their_records_count(adopted_record: Path) -> None:
    clusters = Clusters(adopted_record, Limits(1, 4, 5))
    assert clusters.nodes_in_use() == 3
    with pytest.raises(PermanentError, match="other local clusters run 3 "):
        clusters.claim("new", spec(2))
    clusters.claim("new", spec(1))


def test_the_cap_holds_inside_a_raycronjobs_job_template(tmp_path: Path) -> None:
    job = edited("rayjob.yaml", {})
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=GROUP + 1, maxReplicas=GROUP + 1)
    cron = {"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": "nightly"},
            "spec": {"schedule": "0 2 * * *", "jobTemplate": job["spec"]}}
    assert local_errors(tmp_path, cron) == [
        f"environments/x/c.yaml#0: RayCronJob/nightly: spec.jobTemplate.rayClusterSpec.workerGroupSpecs[0].replicas: "
        f"{GROUP + 1} exceeds the local target's limit of {GROUP} workers per group {WHY}"]


def test_a_local_cluster_cannot_ask_to_run_without_the_token(tmp_path: Path) -> None:
    open_cluster = small_cluster(**{"spec.authOptions": {"mode": "disabled"}})
    assert local_errors(tmp_path, open_cluster) == [
        "environments/x/c.yaml#0: RayCluster/demo: spec.authOptions.mode: disabled is refused by the local target: "
        "every local Ray cluster uses token authentication (remove the field, or set token)"]
    assert render_names(tmp_path, small_cluster(**{"spec.authOptions": {"mode": "token"}})) == ["demo"]


class ClampingTarget(MemoryTarget):
    """The in-memory target holding `maxReplicas` as the local target does (clamped to `cap`)."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def expected(self, rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, dict]:
        return {ref: clamp(manifest, self.cap) for ref, manifest in super().expected(rendered, live).items()}

    def apply(self, item: PlanItem, context: ApplyContext) -> Outcome:
        outcome = super().apply(item, context)
        if item.ref in self.objects:
            held = self.objects[item.ref]
            self.objects[item.ref] = replace(held, manifest=clamp(held.manifest, self.cap))
        return outcome


def test_a_clamp_is_said_once_in_the_log_and_shown_in_status_plan_and_metrics(
        remote: GitRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Through the reconcile stage: the warning is logged once (not at every cycle), the status detail of the object
    carries it, `raycluster_workers{state="max"}` shows the effective bound, and `plan` prints the unchanged object
    with its warning."""
    remote.write("environments/x/environment.yaml", local_environment())
    remote.write("environments/x/c.yaml", dump(small_cluster(**{"spec.workerGroupSpecs.0.maxReplicas": 10**6})))
    remote.commit("a cluster with an autoscaler bound above the cap")
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache")
    reconciler = pipeline(source, tmp_path / "state", ClampingTarget(GROUP), metrics)
    warning = (f"RayCluster/default/demo: spec.workerGroupSpecs[0].maxReplicas: 1000000 is above the local target's "
               f"limit of {GROUP} workers per group {WHY}: clamped to {GROUP} (maxReplicas only bounds the autoscaler)")

    with caplog.at_level(logging.WARNING, logger="reconciler.pipeline.reconcile"):
        first = reconciler.reconcile("x", source.fetch())
        second = reconciler.reconcile("x", source.fetch())

    assert (first.result, second.result) == ("success", "noop")
    assert [r.getMessage() for r in caplog.records] == [f"environment x: {warning}"]
    detail = reconciler.ledger.state("x").detail
    assert detail["objects"]["RayCluster/default/demo"]["warnings"] == [warning.split(": ", 1)[1]]
    assert metrics.registry.get_sample_value("ray_gitops_raycluster_workers", {
        "environment": "x", "cluster": "demo", "group": "cpu", "state": "max"}) == GROUP
    assert _print_plan(reconciler.preview("x", source.fetch()), bodies=False, output="text") == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "    noop RayCluster/default/demo: in sync", f"         warning: {warning.split(': ', 1)[1]}"]
