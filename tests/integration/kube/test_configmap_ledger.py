"""The ledger ConfigMap on the real API server: round trip, creation, concurrent writers."""
from __future__ import annotations

import pytest
from kubernetes import client

from reconciler.model import LedgerSnapshot, ObjectRef
from reconciler.kubeapi import Kube
from reconciler.targets.kubernetes.ledger import ConfigMapLedger

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
