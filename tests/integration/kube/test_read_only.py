"""A look never acts, on the real API server: with a daemon running on an environment, every route of its
status page and API, and `plan`, `diff`, `render`, `status` and `history` run against its state dir, change
no object (every resourceVersion stays), write no Event and send no write request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.conftest import GitRemote
from tests.daemon import DaemonProcess
from tests.eventually import eventually

pytestmark = [pytest.mark.kube, pytest.mark.e2e]
WRITES = ("apply", "create", "update", "delete")


def objects(api_client: client.ApiClient, namespace: str) -> dict[str, str]:
    """kind/name -> resourceVersion of every object ray-gitops could write in `namespace`, and the Events."""
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    found = {f"ConfigMap/{c.metadata.name}": c.metadata.resource_version
             for c in core.list_namespaced_config_map(namespace).items}
    found |= {f"Secret/{s.metadata.name}": s.metadata.resource_version
              for s in core.list_namespaced_secret(namespace).items}
    found |= {f"Event/{e.metadata.name}": e.metadata.resource_version
              for e in core.list_namespaced_event(namespace).items}
    for plural in ("rayclusters", "rayjobs"):
        for item in custom.list_namespaced_custom_object("ray.io", "v1", namespace, plural)["items"]:
            found[f"{plural}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return found


def test_the_status_page_api_and_every_look_command_write_nothing(kube_control_plane, kube_namespace: str,
                                                                  remote: GitRemote, tmp_path: Path) -> None:
    plane = kube_control_plane
    remote.write("environments/k/environment.yaml", yaml.safe_dump({
        "apiVersion": "gitops.ray.io/v1alpha1", "kind": "Environment", "metadata": {"name": "k"},
        "spec": {"target": {"kubernetes": {"namespace": kube_namespace}}, "interval": "1s"}}))
    testdata = Path(__file__).resolve().parents[2] / "testdata" / "kube"
    for name in ("raycluster.yaml", "configmap.yaml", "secret.yaml"):
        remote.write(f"environments/k/{name}", (testdata / name).read_text())
    remote.commit("an environment on the API server")
    state = tmp_path / "state"
    cluster = ["--kubeconfig", str(plane.kubeconfig), "--kube-context", plane.context]
    daemon = DaemonProcess(remote.url, state, tmp_path / "daemon.log", ["--interval", "1s", *cluster])
    with plane.api_client() as api_client:
        try:
            daemon.wait_for("/readyz", daemon.ready, timeout=60)
            counts = {verb: daemon.metric("ray_gitops_kube_requests_total", verb=verb) or 0 for verb in WRITES}
            before = objects(api_client, kube_namespace)
            base = f"http://127.0.0.1:{daemon.port}"
            for route in ("/", "/environments/k", "/ui/app.js", "/api/v1/environments", "/api/v1/environments/k",
                          "/api/v1/environments/k/history", "/api/v1/environments/k/runs"):
                with urllib.request.urlopen(base + route, timeout=10) as answer:
                    assert answer.status == 200, route
            eventually(lambda: json.loads(urllib.request.urlopen(base + "/api/v1/environments/k/plan", timeout=10)
                                          .read())["status"] == "ready", 30, 0.2, "the page's plan to be computed")
            for command in (["plan"], ["diff"], ["render"], ["diff", "-o", "json"]):
                done = subprocess.run([sys.executable, "-m", "reconciler", *command, "--repo", remote.url,
                                       "--environment", "k", "--state-dir", str(state)],
                                      capture_output=True, text=True, timeout=120,
                                      env={**os.environ, "RAY_GITOPS_KUBECONFIG": str(plane.kubeconfig),
                                           "RAY_GITOPS_KUBE_CONTEXT": plane.context})
                assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
            for command in (["status"], ["history", "--environment", "k"]):
                assert subprocess.run([sys.executable, "-m", "reconciler", *command, "--state-dir", str(state)],
                                      capture_output=True, timeout=60).returncode == 0
            def intervals() -> float:  # no-op reconciles, and intervals skipped as quiet (its RayCluster has no status)
                return sum(daemon.metric(name, **labels) or 0 for name, labels in (
                    ("ray_gitops_reconcile_total", {"environment": "k", "result": "noop"}),
                    ("ray_gitops_reconcile_skipped_total", {"environment": "k"})))
            done_before = intervals()
            daemon.wait_for("two more intervals", lambda: intervals() >= done_before + 2, timeout=30)

            assert objects(api_client, kube_namespace) == before
            assert {verb: daemon.metric("ray_gitops_kube_requests_total", verb=verb) or 0 for verb in WRITES} == counts
        finally:
            daemon.stop()
    assert daemon.proc.returncode == 0
