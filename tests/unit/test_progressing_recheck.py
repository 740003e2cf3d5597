"""A Progressing environment is looked at again within WAIT_RECHECK, whatever its interval: health and the
ready-worker metrics follow a rollout within seconds, not one interval after the commit."""
from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import LiveObject, ObjectRef
from reconciler.pipeline.reconcile import WAIT_RECHECK
from reconciler.pipeline.source import GitSource
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline

TESTDATA = Path(__file__).parent.parent / "testdata"
CLUSTER = ObjectRef("ray.io", "RayCluster", "default", "demo")


def test_a_progressing_environment_is_rechecked_soon_and_a_healthy_one_at_its_interval(remote: GitRemote,
                                                                                      tmp_path: Path) -> None:
    target = MemoryTarget()
    remote.write("environments/a/environment.yaml", (TESTDATA / "environment-local.yaml").read_text().replace(
        "name: e2e", "name: a").replace("interval: 2s", "interval: 1h"))
    remote.write("environments/a/raycluster.yaml", (TESTDATA / "raycluster.yaml").read_text().replace(
        "REPLICAS", "3"))
    remote.commit("three workers")
    source = GitSource(remote.url, "main", tmp_path / "cache", Metrics(CollectorRegistry()).git_request)
    reconciler = pipeline(source, tmp_path / "state", target)
    revision = source.fetch()
    reconciler.reconcile("a", revision)

    obj = target.objects[CLUSTER]
    target.objects[CLUSTER] = LiveObject(CLUSTER, obj.manifest, {
        "state": "provisioning", "readyWorkerReplicas": 1, "desiredWorkerReplicas": 3})
    progressing = reconciler.reconcile("a", revision)
    target.objects[CLUSTER] = LiveObject(CLUSTER, obj.manifest, {
        "state": "ready", "readyWorkerReplicas": 3, "desiredWorkerReplicas": 3})
    healthy = reconciler.reconcile("a", revision)

    assert (progressing.health_status, progressing.interval) == ("Progressing", WAIT_RECHECK)
    assert (healthy.health_status, healthy.interval) == ("Healthy", 3600.0)
