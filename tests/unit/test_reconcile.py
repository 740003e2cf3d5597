"""The reconcile stage with real Git and an in-memory target: isolation, prune safety, job ledger."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.ledger import Ledger
from reconciler.metrics import Metrics
from reconciler.model import Action, LedgerSnapshot, LiveObject, ObjectRef, Outcome, PlanItem, RenderedEnvironment
from reconciler.reconcile import EnvironmentReconciler, TargetFactory
from reconciler.source import GitSource
from reconciler.targets.base import ApplyContext
from tests.conftest import GitRemote

TESTDATA = Path(__file__).parent.parent / "testdata"


class MemoryTarget:
    """Stores applied manifests; jobs finish as soon as they are submitted; can be told to fail."""

    kind = "local"
    vanished_runs_are_final = False

    def __init__(self) -> None:
        self.objects: dict[ObjectRef, LiveObject] = {}
        self.failing: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.saved: dict[str, LedgerSnapshot] = {}

    def observe(self, env: RenderedEnvironment, refs: set[ObjectRef]) -> dict[ObjectRef, LiveObject]:
        return {ref: self.objects[ref] for ref in refs if ref in self.objects}

    def expected(self, env: RenderedEnvironment, live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, dict]:
        return {d.ref: d.manifest for d in env.objects if d.ref in live}

    def apply(self, item: PlanItem, context: ApplyContext) -> Outcome:
        self.calls.append((item.action.value, item.ref.name))
        if item.ref.name in self.failing:
            raise RuntimeError("refused by the target")
        if item.action == Action.DELETE:
            del self.objects[item.ref]
            return Outcome.DELETED
        assert item.desired is not None
        status = {"state": "ready"}
        if item.ref.kind == "RayJob":
            from reconciler.model import job_submission_id
            status = {"jobId": job_submission_id(context.environment, item.ref.name, item.desired.manifest),
                      "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete", "startTime": 100.0,
                      "endTime": 112.5}
        self.objects[item.ref] = LiveObject(item.ref, copy.deepcopy(item.desired.manifest), status)
        return Outcome.CREATED

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext) -> None:
        pass  # the log line is the record on this target

    def load_ledger(self, env: object) -> LedgerSnapshot | None:
        return self.saved.get(env.name)

    def save_ledger(self, env: object, snapshot: LedgerSnapshot) -> None:
        self.saved[env.name] = snapshot

    def close(self, environment: str | None = None) -> None:
        pass


def env_yaml(name: str) -> str:
    return (TESTDATA / "environment-local.yaml").read_text().replace("name: e2e", f"name: {name}")


def cluster_yaml(name: str = "demo", replicas: int = 1) -> str:
    return (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas)).replace(
        "name: demo", f"name: {name}")


def commit_two_environments(remote: GitRemote, source: GitSource):
    """Environments `a` and `b`, one cluster each, committed and fetched."""
    for env in ("a", "b"):
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
        remote.write(f"environments/{env}/raycluster.yaml", cluster_yaml())
    remote.commit("two environments")
    return source.fetch()


def commit_job_environment(remote: GitRemote, source: GitSource):
    """Environment `a` with a cluster and the `count` RayJob, committed and fetched."""
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    remote.write("environments/a/rayjob.yaml", (TESTDATA / "rayjob.yaml").read_text())
    remote.commit("a job")
    return source.fetch()


@pytest.fixture
def setup(remote: GitRemote, tmp_path: Path):
    target = MemoryTarget()
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    ledger = Ledger(tmp_path / "state")
    reconciler = EnvironmentReconciler(source, ledger, metrics, TargetFactory(lambda spec: target))
    return remote, source, ledger, metrics, target, reconciler


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_broken_environment_applies_and_prunes_nothing_while_others_go_on(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_two_environments(remote, source)
    assert [reconciler.reconcile(e, revision).result for e in ("a", "b")] == ["success", "success"]

    remote.remove("environments/a/raycluster.yaml")  # would be a prune...
    remote.write("environments/a/broken.yaml", "kind: [unclosed")  # ...but the environment is broken
    remote.write("environments/b/raycluster.yaml", cluster_yaml(replicas=3))
    remote.commit("break a, scale b")
    revision = source.fetch()
    a, b = reconciler.reconcile("a", revision), reconciler.reconcile("b", revision)

    assert (a.result, a.sync_status) == ("error", "Failed")
    assert "environments/a/broken.yaml" in a.message
    assert ("delete", "demo") not in target.calls
    assert len(ledger.inventory("a")) == 1
    assert (b.result, b.sync_status) == ("success", "Synced")
    assert [(i.action, o) for i, o in b.outcomes] == [(Action.UPDATE, Outcome.CREATED)]
    assert sample(metrics, "ray_gitops_reconcile_total", environment="a", result="error") == 1


def test_one_failing_object_does_not_stop_the_others(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/one.yaml", cluster_yaml("one"))
    remote.write("environments/a/two.yaml", cluster_yaml("two"))
    remote.commit("two clusters")
    target.failing.add("one")

    result = reconciler.reconcile("a", source.fetch())

    assert (result.result, result.sync_status) == ("error", "Failed")
    assert "RayCluster/default/one create failed: refused by the target" in result.message
    assert {r.name for r in target.objects} == {"two"}
    assert {r.name for r in ledger.inventory("a")} == {"one", "two"}  # a half-made object stays prunable
    assert ledger.last_applied("a") is None


def test_finished_job_is_counted_once_and_not_rerun_after_its_ttl_deletion(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_job_environment(remote, source)

    reconciler.reconcile("a", revision)
    reconciler.reconcile("a", revision)
    job = next(ref for ref in target.objects if ref.kind == "RayJob")
    del target.objects[job]  # the operator's TTL deleted the finished RayJob
    third = reconciler.reconcile("a", revision)

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count")]
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 1
    assert sample(metrics, "ray_gitops_rayjob_duration_seconds_sum", environment="a", job="count") == 12.5
    assert third.health_status == "Healthy"


def test_changed_job_spec_is_a_new_run(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    job = (TESTDATA / "rayjob.yaml").read_text()
    remote.write("environments/a/rayjob.yaml", job)
    remote.commit("a job")
    reconciler.reconcile("a", source.fetch())
    remote.write("environments/a/rayjob.yaml", job.replace("range(10)", "range(20)"))
    remote.commit("change the job")

    reconciler.reconcile("a", source.fetch())

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count"), ("recreate", "count")]
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 2
    assert len(ledger.finished_runs("a")) == 2


def test_suspended_environment_changes_nothing(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    remote.write("environments/a/environment.yaml", env_yaml("a").replace("prune: true", "suspend: true"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    remote.commit("suspended")

    result = reconciler.reconcile("a", source.fetch())

    assert result.sync_status == "Suspended" and target.calls == []


def test_unexpected_target_exception_fails_only_that_environment(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_two_environments(remote, source)
    observe = target.observe

    def flaky(env: RenderedEnvironment, refs: set[ObjectRef]) -> dict[ObjectRef, LiveObject]:
        if env.spec.name == "a":
            raise ConnectionError("dashboard unreachable")
        return observe(env, refs)

    monkeypatch.setattr(target, "observe", flaky)
    a, b = reconciler.reconcile("a", revision), reconciler.reconcile("b", revision)

    assert (a.result, a.sync_status, a.message) == ("error", "Failed", "ConnectionError: dashboard unreachable")
    assert (b.result, b.sync_status) == ("success", "Synced")
    assert [s.sync_status for s in ledger.states()] == ["Failed", "Synced"]


def test_on_kubernetes_a_run_deleted_before_it_was_seen_to_end_is_not_recreated(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    target.vanished_runs_are_final = True
    revision = commit_job_environment(remote, source)
    apply = target.apply

    def still_running(item: PlanItem, context: ApplyContext) -> Outcome:
        outcome = apply(item, context)
        if item.ref.kind == "RayJob":
            obj = target.objects[item.ref]
            target.objects[item.ref] = LiveObject(obj.ref, obj.manifest, {**obj.status, "jobStatus": "RUNNING",
                                                                         "jobDeploymentStatus": "Running"})
        return outcome

    target.apply = still_running  # type: ignore[method-assign]
    reconciler.reconcile("a", revision)
    job = next(ref for ref in target.objects if ref.kind == "RayJob")
    del target.objects[job]  # deleted (TTL, DeleteSelf) while we were not looking
    reconciler.reconcile("a", revision)

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count")]
    assert list(ledger.finished_runs("a").values()) == ["deleted"]
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") is None


def test_target_kept_ledger_is_written_on_change_only_and_adopted_by_a_fresh_daemon(setup, tmp_path: Path) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_job_environment(remote, source)
    reconciler.reconcile("a", revision)
    saved = target.saved["a"]
    reconciler.reconcile("a", revision)
    assert target.saved["a"] is saved  # nothing changed: nothing written

    fresh = EnvironmentReconciler(source, Ledger(tmp_path / "empty-state"), Metrics(CollectorRegistry()),
                                  TargetFactory(lambda spec: target))
    fresh.reconcile("a", revision)

    assert {r.name for r in saved.inventory} == {"demo", "count"}
    assert [result for _, result in saved.runs] == ["succeeded"]
    assert fresh.ledger.inventory("a") == ledger.inventory("a")
    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count")]  # not re-run by the new one


def test_failed_prune_stays_in_the_inventory_and_is_retried(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    for name in ("keep", "drop"):
        remote.write(f"environments/a/{name}.yaml", cluster_yaml(name))
    remote.commit("two clusters")
    reconciler.reconcile("a", source.fetch())
    remote.remove("environments/a/drop.yaml")
    remote.commit("drop one")
    target.failing.add("drop")

    failed = reconciler.reconcile("a", source.fetch())
    assert failed.sync_status == "Failed" and {r.name for r in ledger.inventory("a")} == {"keep", "drop"}
    target.failing.clear()
    retried = reconciler.reconcile("a", source.fetch())

    assert [(i.ref.name, o) for i, o in retried.outcomes] == [("drop", Outcome.DELETED)]
    assert {r.name for r in ledger.inventory("a")} == {"keep"}
