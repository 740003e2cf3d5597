"""A daemon on the real API server (no operator): an environment whose inputs and live objects do not move
costs nothing per interval even while it is not Healthy (its RayCluster Progressing, its RayJob's run in
progress), and a status written by someone else (the operator) wakes it at once.

The daemon runs as a process and is stopped by its PID, pass or fail.
"""
from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import kube_controlplane
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GitRemote
from tests.daemon import DaemonProcess

pytestmark = [pytest.mark.kube, pytest.mark.e2e]
OBJECTS = """\
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: train}
spec:
  headGroupSpec:
    rayStartParams: {num-cpus: "0"}
    template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
  workerGroupSpecs:
  - groupName: cpu
    replicas: 1
    minReplicas: 0
    maxReplicas: 2
    template: {spec: {containers: [{name: ray-worker, image: rayproject/ray:2.60.0}]}}
---
apiVersion: ray.io/v1
kind: RayJob
metadata: {name: nightly}
spec:
  clusterSelector: {ray.io/cluster: train}
  entrypoint: python -c "print(1)"
"""
READY = {"state": "ready", "desiredWorkerReplicas": 1, "readyWorkerReplicas": 1,
         "conditions": [{"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady",
                         "message": "", "lastTransitionTime": "2026-12-05T00:00:00Z"},
                        {"type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReadyFirstTime",
                         "message": "", "lastTransitionTime": "2026-12-05T00:00:00Z"}]}
RECHECK = 10.0  # a Progressing environment's interval (WAIT_RECHECK)


def test_a_progressing_environment_waits_for_the_watch_and_a_status_change_wakes_it(
        remote: GitRemote, tmp_path: Path, kube_control_plane: kube_controlplane.ControlPlane,
        kube_namespace: str) -> None:
    remote.write("environments/p/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: p}}\nspec: {{target: {{kubernetes: {{namespace: {kube_namespace}}}}}, "
                 "interval: 10m}\n")
    remote.write("environments/p/objects.yaml", OBJECTS)
    remote.commit("a RayCluster and a RayJob")
    key = tmp_path / "installation-key"
    key.write_text("k" * 40)
    daemon = DaemonProcess(remote.url, tmp_path / "state", tmp_path / "daemon.log", [
        "--interval", "1s", "--kubeconfig", str(kube_control_plane.kubeconfig),
        "--kube-context", kube_control_plane.context], environ={"RAY_GITOPS_INSTALLATION_KEY_FILE": str(key)})

    def samples(name: str) -> list[tuple[dict[str, str], float]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:  # not serving yet
            return []
        return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == name]

    def health() -> str:
        return next((labels["health_status"] for labels, _ in samples("ray_gitops_environment_info")
                     if labels.get("environment") == "p"), "")

    def reconciles() -> float:
        return sum(v for labels, v in samples("ray_gitops_reconcile_total") if labels["environment"] == "p")

    def requests() -> float:
        return sum(v for _, v in samples("ray_gitops_kube_requests_total"))

    try:
        daemon.wait_for("p Progressing", lambda: health() == "Progressing", 60, 0.2)
        before, sent = reconciles(), requests()
        # its interval comes (10 s while Progressing) and goes by: skipped, no reconcile, no request
        daemon.wait_for("p's interval skipped",
                        lambda: (daemon.metric("ray_gitops_reconcile_skipped_total", environment="p") or 0) >= 1,
                        RECHECK + 10, 0.5)
        assert (reconciles(), requests()) == (before, sent)
        assert health() == "Progressing"

        custom = client.CustomObjectsApi(kube_control_plane.api_client())
        # the operator's statuses, one after the other: each wakes it (not its interval, 10 s away)
        custom.patch_namespaced_custom_object_status("ray.io", "v1", kube_namespace, "rayclusters", "train",
                                                     {"status": READY}, _content_type="application/merge-patch+json")
        changed = time.monotonic()
        daemon.wait_for("a reconcile", lambda: reconciles() == before + 1, RECHECK, 0.1)
        assert time.monotonic() - changed < RECHECK / 2, "the cluster's status did not wake it"
        assert health() == "Progressing"  # its RayJob's run has not started
        run = custom.get_namespaced_custom_object("ray.io", "v1", kube_namespace, "rayjobs", "nightly")["spec"]["jobId"]
        custom.patch_namespaced_custom_object_status("ray.io", "v1", kube_namespace, "rayjobs", "nightly", {"status": {
            "jobId": run, "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete",
            "startTime": "2026-12-05T00:00:00Z", "endTime": "2026-12-05T00:00:01Z"}},
            _content_type="application/merge-patch+json")
        changed = time.monotonic()
        daemon.wait_for("p Healthy", lambda: health() == "Healthy", RECHECK, 0.1)
        assert time.monotonic() - changed < RECHECK / 2, "the run's status did not wake it"
        assert reconciles() == before + 2
    finally:
        daemon.stop(signal.SIGKILL, timeout=30)
