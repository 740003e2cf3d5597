"""The reconcile stage with real Git and an in-memory target: isolation, prune safety, job ledger."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import (
    Action,
    LedgerSnapshot,
    LiveObject,
    ObjectRef,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    RunResult,
)
from reconciler.pipeline.ledger import Record
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.target import ApplyContext, Observation
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline

TESTDATA = Path(__file__).parent.parent / "testdata"


def env_yaml(name: str) -> str:
    return (TESTDATA / "environment-local.yaml").read_text().replace("name: e2e", f"name: {name}")


def cluster_yaml(name: str = "demo", replicas: int = 1) -> str:
    return (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas)).replace(
        "name: demo", f"name: {name}")


def commit_two_environments(remote: GitRemote, source: GitSource):
    """Environments `a` and `b`, one cluster each (`demo-a`, `demo-b`), committed and fetched."""
    for env in ("a", "b"):
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
        remote.write(f"environments/{env}/raycluster.yaml", cluster_yaml(f"demo-{env}"))
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
    reconciler = pipeline(source, tmp_path / "state", target, metrics)
    return remote, source, reconciler.ledger, metrics, target, reconciler


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_broken_environment_applies_and_prunes_nothing_while_others_go_on(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_two_environments(remote, source)
    assert [reconciler.reconcile(e, revision).result for e in ("a", "b")] == ["success", "success"]

    remote.remove("environments/a/raycluster.yaml")  # would be a prune...
    remote.write("environments/a/broken.yaml", "kind: [unclosed")  # ...but the environment is broken
    remote.write("environments/b/raycluster.yaml", cluster_yaml("demo-b", replicas=3))
    remote.commit("break a, scale b")
    revision = source.fetch()
    a, b = reconciler.reconcile("a", revision), reconciler.reconcile("b", revision)

    assert (a.result, a.sync_status) == ("error", "Failed")
    assert "environments/a/broken.yaml" in a.message
    assert ("delete", "demo-a") not in target.calls
    assert len(ledger.load("a").inventory) == 1
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
    assert {r.name for r in ledger.load("a").inventory} == {"one", "two"}  # a half-made object stays prunable
    assert ledger.load("a").last_applied is None


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
    assert len(ledger.load("a").finished) == 2


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

    def flaky(rendered: RenderedEnvironment, refs: set[ObjectRef], pending: frozenset[str]) -> Observation:
        if rendered.spec.name == "a":
            raise ConnectionError("dashboard unreachable")
        return observe(rendered, refs, pending)

    monkeypatch.setattr(target, "observe", flaky)
    a, b = reconciler.reconcile("a", revision), reconciler.reconcile("b", revision)

    assert (a.result, a.sync_status, a.message) == ("error", "Failed", "ConnectionError: dashboard unreachable")
    assert (b.result, b.sync_status) == ("success", "Synced")
    assert [s.sync_status for s in ledger.states()] == ["Failed", "Synced"]


def test_on_kubernetes_a_run_deleted_before_it_was_seen_to_end_is_not_recreated(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    target.reports_deleted_runs = True
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
    assert list(ledger.load("a").finished.values()) == ["deleted"]
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") is None


def test_a_submission_the_target_refused_is_made_again_not_taken_for_a_deleted_run(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    target.reports_deleted_runs = True  # as on Kubernetes: a pending run without its RayJob is reported DELETED
    revision = commit_job_environment(remote, source)
    target.failing = {"count"}  # e.g. its namespace does not exist yet
    assert reconciler.reconcile("a", revision).result == "error"
    assert ledger.load("a").finished == {} and ledger.load("a").pending == frozenset()

    target.failing = set()
    reconciler.reconcile("a", revision)

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count"), ("submit", "count")]
    assert list(ledger.load("a").finished.values()) == ["succeeded"]


def test_a_submission_left_by_a_stop_is_made_at_the_next_start(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    target.reports_deleted_runs = True
    revision = commit_job_environment(remote, source)
    apply = target.apply

    def stop_after_the_cluster(item: PlanItem, context: ApplyContext) -> Outcome:
        outcome = apply(item, context)
        reconciler.stopping.set()  # SIGTERM while the RayCluster is applied: the RayJob is left for later
        return outcome

    target.apply = stop_after_the_cluster  # type: ignore[method-assign]
    assert reconciler.reconcile("a", revision).message.startswith("stopping: 1 change(s) left")
    assert ledger.load("a").pending == frozenset() and ledger.load("a").finished == {}

    target.apply = apply  # type: ignore[method-assign]
    restarted = pipeline(source, Path(ledger.path).parent, target, metrics)
    restarted.reconcile("a", revision)

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count")]
    assert list(ledger.load("a").finished.values()) == ["succeeded"]


def test_target_kept_ledger_is_written_on_change_only_and_adopted_by_a_fresh_daemon(setup, tmp_path: Path) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_job_environment(remote, source)
    reconciler.reconcile("a", revision)
    saved = target.saved["a"]
    reconciler.reconcile("a", revision)
    assert target.saved["a"] is saved  # nothing changed: nothing written

    fresh = pipeline(source, tmp_path / "empty-state", target)
    fresh.reconcile("a", revision)

    assert {r.name for r in saved.inventory} == {"demo", "count"}
    assert [result for _, result in saved.runs] == ["succeeded"]
    assert fresh.ledger.load("a").inventory == ledger.load("a").inventory
    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count")]  # not re-run by the new one
    assert [r.spec_hash for r in fresh.ledger.runs("a")] == [r.spec_hash for r in ledger.runs("a")] != [""]


def test_a_run_the_ledger_did_not_record_takes_its_spec_hash_from_git_never_from_its_id() -> None:
    slot = "a-nightly-1764900000"  # a RayCronJob slot's run: its id ends in the slot, not in a spec hash
    record, _ = Record().seen(slot, "nightly", "RUNNING")
    record, _ = record.seen("a-count-0123456789", "count", "RUNNING", spec_hash="0123456789")
    assert {r.submission_id: r.spec_hash for r in record.runs.values()} == {
        slot: "", "a-count-0123456789": "0123456789"}
    adopted = Record().merged(LedgerSnapshot(runs=((slot, "succeeded"),)), {})
    assert (adopted.runs[slot].spec_hash, adopted.runs[slot].result) == ("", RunResult.SUCCEEDED)


def keep_and_drop_applied(remote: GitRemote, source: GitSource, reconciler) -> None:
    """Environment `a` with the clusters `keep` and `drop`, committed and reconciled."""
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    for name in ("keep", "drop"):
        remote.write(f"environments/a/{name}.yaml", cluster_yaml(name))
    remote.commit("two clusters")
    reconciler.reconcile("a", source.fetch())


def test_failed_prune_stays_in_the_inventory_and_is_retried(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    keep_and_drop_applied(remote, source, reconciler)
    remote.remove("environments/a/drop.yaml")
    remote.commit("drop one")
    target.failing.add("drop")

    failed = reconciler.reconcile("a", source.fetch())
    assert failed.sync_status == "Failed" and {r.name for r in ledger.load("a").inventory} == {"keep", "drop"}
    target.failing.clear()
    retried = reconciler.reconcile("a", source.fetch())

    assert [(i.ref.name, o) for i, o in retried.outcomes] == [("drop", Outcome.DELETED)]
    assert {r.name for r in ledger.load("a").inventory} == {"keep"}


def test_an_unreachable_target_stops_the_environment_at_the_first_change_and_forgets_nothing(setup, caplog) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    keep_and_drop_applied(remote, source, reconciler)
    remote.remove("environments/a/drop.yaml")
    for name in ("new1", "new2", "new3"):
        remote.write(f"environments/a/{name}.yaml", cluster_yaml(name))
    remote.commit("three new, one gone")
    target.unreachable, target.calls = True, []

    failed = reconciler.reconcile("a", source.fetch())

    assert len(target.calls) == 1  # not four failures: the first one says it
    assert failed.sync_status == "Failed" and "connection refused" in failed.message
    assert "3 more change(s) wait for the next attempt" in caplog.text
    assert {r.name for r in ledger.load("a").inventory} >= {"keep", "drop"}  # the untried prune is not forgotten
    target.unreachable = False
    recovered = reconciler.reconcile("a", source.fetch())
    assert recovered.sync_status == "Synced"
    assert {r.name for r in target.objects} == {r.name for r in ledger.load("a").inventory} \
        == {"keep", "new1", "new2", "new3"}


def fail_final_commit_once(ledger, monkeypatch: pytest.MonkeyPatch) -> list[OSError]:
    """The next reconcile's last ledger commit (the one with the state) fails; the list empties when it has."""
    commit, failures = ledger.commit, [OSError("disk full")]

    def final_commit_fails_once(name, persisted=None, record=None, state=None, applied=None):
        if state is not None and applied is not None and failures:
            raise failures.pop()
        return commit(name, persisted, record, state, applied)
    monkeypatch.setattr(ledger, "commit", final_commit_fails_once)
    return failures


def test_a_finished_run_is_counted_after_the_ledger_says_so(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    revision = commit_job_environment(remote, source)
    failures = fail_final_commit_once(ledger, monkeypatch)
    failed = reconciler.reconcile("a", revision)  # the run ends, but the record of it is not written
    assert failed.sync_status == "Failed" and not failures
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") is None
    reconciler.reconcile("a", revision)
    reconciler.reconcile("a", revision)

    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 1


def test_a_run_that_ends_with_a_change_is_counted_once_its_claim_is_committed(setup, monkeypatch) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    apply = target.apply

    def still_running(item: PlanItem, context: ApplyContext) -> Outcome:
        outcome = apply(item, context)
        if item.ref.kind == "RayJob":
            live = target.objects[item.ref]
            target.objects[item.ref] = replace(live, status={**live.status, "jobStatus": "RUNNING", "endTime": None})
        return outcome
    monkeypatch.setattr(target, "apply", still_running)
    reconciler.reconcile("a", commit_job_environment(remote, source))  # submitted, seen running
    monkeypatch.setattr(target, "apply", apply)
    job = next(ref for ref in target.objects if ref.kind == "RayJob")
    target.objects[job] = replace(target.objects[job], status={**target.objects[job].status, "jobStatus": "SUCCEEDED",
                                                                "endTime": 112.5})  # it ends before the next look
    remote.write("environments/a/other.yaml", cluster_yaml("other"))
    remote.commit("another cluster")
    revision = source.fetch()
    failures = fail_final_commit_once(ledger, monkeypatch)
    failed = reconciler.reconcile("a", revision)  # the end is committed with the claim of `other`, then a failure
    assert failed.sync_status == "Failed" and not failures
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 1
    reconciler.reconcile("a", revision)

    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 1


def test_a_label_change_on_a_finished_job_is_applied_without_a_new_run(setup) -> None:
    remote, source, ledger, metrics, target, reconciler = setup
    reconciler.reconcile("a", commit_job_environment(remote, source))  # submitted; it ends at once here
    job = (TESTDATA / "rayjob.yaml").read_text()
    assert "metadata: {name: count}" in job
    remote.write("environments/a/rayjob.yaml", job.replace("metadata: {name: count}",
                                                           "metadata: {name: count, labels: {team: ml}}"))
    remote.commit("label the job")

    result = reconciler.reconcile("a", source.fetch())

    assert [c for c in target.calls if c[1] == "count"] == [("submit", "count"), ("update", "count")]
    live = next(o for ref, o in target.objects.items() if ref.kind == "RayJob")
    assert live.manifest["metadata"]["labels"]["team"] == "ml" and result.sync_status == "Synced"
    assert sample(metrics, "ray_gitops_rayjob_runs_total", environment="a", job="count", result="succeeded") == 1
