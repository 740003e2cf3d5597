"""The ledger ConfigMap on the real API server: round trip, creation, concurrent writers, forgeries ignored."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from reconciler.kubeapi import Kube
from reconciler.metrics import Metrics
from reconciler.model import LedgerSnapshot, ObjectRef, job_submission_id
from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import Pipeline
from reconciler.pipeline.render import render
from reconciler.pipeline.source import GitSource
from reconciler.targets import Cluster, Registry, Runtime
from reconciler.targets.kubernetes.ledger import ConfigMapLedger
from tests.conftest import GitRemote

pytestmark = pytest.mark.kube
CLUSTER = ObjectRef("ray.io", "RayCluster", "ns", "demo")


def test_snapshot_round_trips_and_is_created_when_absent(kube_control_plane, kube_namespace: str) -> None:
    api_client = kube_control_plane.api_client()
    core, verbs = client.CoreV1Api(api_client), []
    ledger = ConfigMapLedger(Kube(api_client, verbs.append), kube_namespace, "prod")
    assert ledger.load() is None

    snapshot = LedgerSnapshot(frozenset({CLUSTER}), (("prod-job-0123456789", "succeeded"),))
    ledger.save(snapshot)

    assert ConfigMapLedger(Kube(api_client, lambda verb: None), kube_namespace, "prod").load() == snapshot
    assert verbs == ["get", "create"]
    labels = core.read_namespaced_config_map("ray-gitops-ledger-prod", kube_namespace).metadata.labels
    assert labels == {"app.kubernetes.io/managed-by": "ray-gitops", "gitops.ray.io/environment": "prod"}


def test_a_stale_writer_merges_instead_of_losing_finished_runs(kube_control_plane, kube_namespace: str) -> None:
    kube = Kube(kube_control_plane.api_client(), lambda verb: None)
    first, second = ConfigMapLedger(kube, kube_namespace, "prod"), ConfigMapLedger(kube, kube_namespace, "prod")
    first.load()
    first.save(LedgerSnapshot(frozenset({CLUSTER}), (("run-a", ""),)))
    second.load()
    second.save(LedgerSnapshot(frozenset({CLUSTER}), (("run-a", "succeeded"),)))

    first.save(LedgerSnapshot(frozenset(), (("run-a", ""), ("run-b", "failed"))))  # stale resourceVersion

    stored = ConfigMapLedger(kube, kube_namespace, "prod").load()
    assert stored is not None and dict(stored.runs) == {"run-a": "succeeded", "run-b": "failed"}
    assert stored.inventory == frozenset()  # the writer's inventory wins: it just reconciled


def test_a_ledger_a_tenant_wrote_is_reported_and_ignored_never_obeyed(kube_control_plane, kube_namespace: str,
                                                                       remote: GitRemote, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A tenant that can write ConfigMaps in a namespace it shares writes `ray-gitops-ledger-b` claiming b's RayJob
    run already finished. b, adopting with an empty state dir, does not believe it (no signature of this
    installation's key): it submits its RayJob, says why once, and its own signed copy replaces the forgery."""
    remote.write("environments/b/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: b}}\nspec: {{target: {{kubernetes: {{namespace: {kube_namespace}}}}}}}\n")
    remote.write("environments/b/job.yaml", "apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: count}\nspec:\n"
                 "  entrypoint: python -c 'print(1)'\n  clusterSelector: {ray.io/cluster: demo}\n")
    remote.commit("b with a RayJob")
    core = client.CoreV1Api(kube_control_plane.api_client())
    metrics = Metrics(CollectorRegistry())
    source = GitSource(remote.url, "main", tmp_path / "git")
    revision = source.fetch()
    targets = Registry(Runtime(tmp_path, metrics, clusters={"default": Cluster(
        "default", str(kube_control_plane.kubeconfig), kube_control_plane.context)}, ledger_key=b"installation-key"))
    run = job_submission_id("b", "count", render(revision.tree, "b", revision.sha, targets).objects[0].manifest)
    forged = "hmac-sha256:" + "0" * 64
    core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="ray-gitops-ledger-b", labels={
            "app.kubernetes.io/managed-by": "ray-gitops", "gitops.ray.io/environment": "b"}),
        data={"inventory": "[]", "runs": json.dumps({run: "succeeded"}), "verified": "", "signature": forged}))
    try:
        result = Pipeline(source, Ledger(tmp_path / "empty-state"), metrics, targets).reconcile("b", revision)
    finally:
        targets.close(workloads=False)  # writes the queued Events

    assert [(i.action.value, i.ref.name) for i, _ in result.outcomes] == [("submit", "count")], result.message
    live = client.CustomObjectsApi(kube_control_plane.api_client()).get_namespaced_custom_object(
        "ray.io", "v1", kube_namespace, "rayjobs", "count")
    assert live["spec"]["jobId"] == run
    stored = core.read_namespaced_config_map("ray-gitops-ledger-b", kube_namespace).data
    assert json.loads(stored["runs"]) == {run: ""} and stored["signature"] not in ("", forged)
    assert caplog.text.count("has a signature this installation did not make") == 1
    assert [e.reason for e in core.list_namespaced_event(kube_namespace).items
            if e.involved_object.name == "ray-gitops-ledger-b"] == ["LedgerUnverifiable"]
