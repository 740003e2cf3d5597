"""What `status` and the metrics say of a RayJob run the operator has not had a Ray job status for yet."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import JOB_STATUSES, LiveObject, Outcome, PlanItem
from reconciler.pipeline.source import GitSource
from reconciler.pipeline.target import ApplyContext
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline

TESTDATA = Path(__file__).parent.parent / "testdata"


def test_a_running_rayjob_without_a_ray_job_status_is_a_pending_run(remote: GitRemote, tmp_path: Path) -> None:
    """KubeRay 1.6.2 with no reachable Ray head: jobDeploymentStatus Running, no jobStatus."""
    target, metrics = MemoryTarget(), Metrics(CollectorRegistry())
    create = target.apply

    def running(item: PlanItem, context: ApplyContext) -> Outcome:
        outcome = create(item, context)
        obj = target.objects[item.ref]
        target.objects[item.ref] = LiveObject(obj.ref, obj.manifest, {
            "jobId": obj.status["jobId"], "jobDeploymentStatus": "Running", "startTime": "2026-12-03T10:00:00Z"})
        return outcome

    target.apply = running  # type: ignore[method-assign]
    remote.write("environments/a/environment.yaml", (TESTDATA / "environment-local.yaml").read_text().replace(
        "name: e2e", "name: a"))
    remote.write("environments/a/rayjob.yaml", (TESTDATA / "rayjob.yaml").read_text())
    remote.commit("a job")
    source = GitSource(remote.url, "main", tmp_path / "cache", metrics.git_request)
    reconciler = pipeline(source, tmp_path / "state", target, metrics)

    result = reconciler.reconcile("a", source.fetch())

    state = reconciler.ledger.state("a")
    assert state is not None and state.detail["jobs"]["count"] == {"status": "PENDING", "health": "Progressing"}
    assert result.health_status == "Progressing"
    assert {s: metrics.registry.get_sample_value("ray_gitops_rayjob_status", {
        "environment": "a", "job": "count", "status": s}) for s in JOB_STATUSES} == {
        s: float(s == "PENDING") for s in JOB_STATUSES}
