"""Drill: the kube-apiserver stopped and started again (same etcd, port and certificates) in the middle of
an apply by one daemon reconciling three environments on it: the daemon recovers without a restart and
loses nothing.

A control plane of its own (not the session's: stopping its API server would disturb other tests). The
daemon is rate-limited (`--kube-api-qps`) so the apply of the second revision (about 150 changes) lasts
long enough to be cut: the API server is stopped once a few objects of it are applied, stays down until
the failure is visible, and is started again. Everything Git holds must then be on the cluster, in the
SQLite inventory and in each ledger ConfigMap, nothing more; and the watches must be alive again.
"""
from __future__ import annotations

import base64
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.conftest import GitRemote
from tests.daemon import DaemonProcess
from tests.faults.drill import LedgerView, kill9, stop_leftovers, tail

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controlplane"))
import kube_controlplane  # noqa: E402  (as tests/integration/conftest.py imports it)

pytestmark = [pytest.mark.faults, pytest.mark.kube, pytest.mark.e2e]
ENVIRONMENTS = ("alpha", "beta", "gamma")
MANAGED = "app.kubernetes.io/managed-by=ray-gitops"
APPLIED = re.compile(r"environment \w+: \S+ (created|configured|deleted) ")
FAILED = re.compile(r" ERROR .*environment (\w+): \S+ \w+ failed: ")


@pytest.fixture
def own_control_plane() -> Iterator[kube_controlplane.ControlPlane]:
    """A control plane for this test alone, stopped (every process by PID) and removed afterwards."""
    plane = kube_controlplane.start_control_plane(kube_controlplane.ensure_assets())
    try:
        yield plane
    finally:
        plane.cleanup()


def namespace(env: str) -> str:
    return f"drill-{env}"


def write_revision(remote: GitRemote, plane: kube_controlplane.ControlPlane, second: bool) -> dict[str, dict]:
    """Each environment's objects: revision 1 holds cm-000..019, 2 Secrets and a RayCluster; revision 2
    removes cm-000..004, edits cm-005..009, adds cm-020..059, edits a Secret and scales the cluster.
    Returns environment -> {(kind, name): data or replicas} as Git holds it."""
    wanted: dict[str, dict] = {}
    for env in ENVIRONMENTS:
        directory = remote.work_path / "environments" / env
        target = f"kubernetes: {{namespace: {namespace(env)}}}"
        remote.write(f"environments/{env}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                     f"metadata: {{name: {env}}}\nspec:\n  target:\n    {target}\n  interval: 1s\n")
        objects: dict = {}
        for i in range(5 if second else 0, 60 if second else 20):
            data = {"index": str(i), "revision": "2" if second and i < 10 else "1"}
            objects[("ConfigMap", f"cm-{i:03d}")] = data
            remote.write(f"environments/{env}/cm-{i:03d}.yaml",
                         f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:03d}}}\ndata: {json.dumps(data)}\n")
        for i in range(5 if second else 0):
            (directory / f"cm-{i:03d}.yaml").unlink()
        for i in range(2):
            value = f"{env}-secret-{i}-{'2' if second and i == 0 else '1'}"
            objects[("Secret", f"secret-{i}")] = {"value": value}
            remote.write(f"environments/{env}/secret-{i}.yaml", f"apiVersion: v1\nkind: Secret\n"
                         f"metadata: {{name: secret-{i}}}\nstringData: {{value: {value}}}\n")
        replicas = 2 if second else 1
        objects[("RayCluster", "demo")] = replicas
        remote.write(f"environments/{env}/raycluster.yaml", f"""apiVersion: ray.io/v1
kind: RayCluster
metadata: {{name: demo}}
spec:
  headGroupSpec:
    rayStartParams: {{}}
    template: {{spec: {{containers: [{{name: ray-head, image: rayproject/ray:2.60.0}}]}}}}
  workerGroupSpecs:
  - groupName: cpu
    replicas: {replicas}
    minReplicas: 0
    maxReplicas: 4
    rayStartParams: {{}}
    template: {{spec: {{containers: [{{name: ray-worker, image: rayproject/ray:2.60.0}}]}}}}
""")
        wanted[env] = objects
    return wanted


def live(plane: kube_controlplane.ControlPlane, env: str) -> tuple[dict, set]:
    """(kind, name) -> data or replicas of what ray-gitops owns in the environment's namespace (the ledger
    ConfigMap apart), and that ledger's inventory as (kind, name)."""
    ns = namespace(env)
    with plane.api_client() as api_client:
        core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        found: dict = {}
        ledger: set = set()
        for cm in core.list_namespaced_config_map(ns, label_selector=MANAGED).items:
            if cm.metadata.name == f"ray-gitops-ledger-{env}":
                ledger = {(kind, name) for _, kind, _, name in json.loads(cm.data["inventory"])}
            else:
                found[("ConfigMap", cm.metadata.name)] = cm.data
        for secret in core.list_namespaced_secret(ns, label_selector=MANAGED).items:
            found[("Secret", secret.metadata.name)] = {k: base64.b64decode(v).decode()
                                                       for k, v in (secret.data or {}).items()}
        for rc in custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayclusters",
                                                       label_selector=MANAGED)["items"]:
            found[("RayCluster", rc["metadata"]["name"])] = rc["spec"]["workerGroupSpecs"][0]["replicas"]
    return found, ledger


def test_apiserver_stopped_mid_apply_and_started_again_daemon_recovers_and_loses_nothing(
        own_control_plane: kube_controlplane.ControlPlane, remote: GitRemote, tmp_path: Path) -> None:
    plane = own_control_plane
    with plane.api_client() as api_client:
        for env in ENVIRONMENTS:
            client.CoreV1Api(api_client).create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace(env))))
    write_revision(remote, plane, second=False)
    sha = remote.commit("revision 1: 23 objects per environment")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    ledger = LedgerView(state / "ledger.sqlite3")
    daemon = DaemonProcess(remote.url, state, log,
                           ["--interval", "1s", "--kube-api-qps", "25", "--kube-api-burst", "1",
                            "--kubeconfig", str(plane.kubeconfig), "--kube-context", plane.context])
    try:
        daemon.wait_for("revision 1 applied", lambda: ledger.converged(ENVIRONMENTS, sha), timeout=120)
        pid = daemon.proc.pid

        wanted = write_revision(remote, plane, second=True)
        offset = log.stat().st_size
        sha = remote.commit("revision 2: 5 removed, 6 edited, 40 added, a cluster scaled, per environment")
        daemon.wait_for("revision 2 being applied", lambda: len(APPLIED.findall(
            log.read_bytes()[offset:].decode())) >= 12, timeout=60, poll=0.01)
        plane.stop_apiserver()
        stopped = time.monotonic()
        applied_before = len(APPLIED.findall(log.read_bytes()[offset:].decode()))
        daemon.wait_for("an environment Failed while the API server is down", lambda: any(
            sync == "Failed" for _, sync in ledger.states().values()), timeout=60, poll=0.1)
        time.sleep(max(0.0, stopped + 5 - time.monotonic()))  # down at least 5 s
        outage = log.read_bytes()[offset:].decode()
        failed = {m.group(1) for m in FAILED.finditer(outage)}
        plane.start_apiserver()
        restarted = time.monotonic()
        down = restarted - stopped
        daemon.wait_for("revision 2 applied after the restart", lambda: ledger.converged(ENVIRONMENTS, sha),
                        timeout=180)
        recovered = time.monotonic() - restarted
        print(f"API server stopped after {applied_before} of about 156 changes, unreachable for {down:.1f}s "
              f"(its restart included); environments with failed applies: {sorted(failed)}; every environment Synced "
              f"{recovered:.1f}s after the API server was back")
        assert failed, "no apply failed: the API server was not stopped in the middle of an apply"
        per_attempt = [line for line in outage.splitlines() if FAILED.search(line)]
        assert all("wait for the next attempt" in line for line in per_attempt if "unreachable" in line), \
            "an unreachable API server was tried again for the next object of the same reconcile"
        assert "Retrying (Retry(" not in outage, "urllib3's retry warnings reached the log"
        print(f"failed-apply log lines while the API server was down: {len(per_attempt)}")
        assert daemon.proc.pid == pid and daemon.proc.poll() is None  # recovered without a restart

        # The ledger ConfigMap (the target's copy) is written after the SQLite ledger says "applied".
        daemon.wait_for("every ledger ConfigMap's inventory equal to Git", lambda: all(
            live(plane, env)[1] == set(wanted[env]) for env in ENVIRONMENTS), timeout=30)
        for env in ENVIRONMENTS:
            found, kept = live(plane, env)
            assert found == wanted[env], f"{env}: the cluster differs from Git"
            assert kept == set(wanted[env]), f"{env}: the ledger ConfigMap's inventory differs from Git"
            assert {(kind, name) for kind, _, name in ledger.inventory(env)} == set(wanted[env]), env
            assert ledger.history(env)[-1] == (sha, "success"), env
        assert (daemon.metric("ray_gitops_reconcile_total", environment=sorted(failed)[0], result="error") or 0) >= 1

        settled = log.stat().st_size  # converged means a steady state: the next intervals change nothing

        def intervals(env: str) -> float:  # no-op reconciles, and intervals skipped as quiet (no operator: no status)
            return sum(daemon.metric(name, **labels) or 0 for name, labels in (
                ("ray_gitops_reconcile_total", {"environment": env, "result": "noop"}),
                ("ray_gitops_reconcile_skipped_total", {"environment": env})))
        done = {env: intervals(env) for env in ENVIRONMENTS}
        daemon.wait_for("an interval of every environment with nothing to do", lambda: all(
            intervals(env) > done[env] for env in ENVIRONMENTS), timeout=30)
        again = [m.group(0) for m in APPLIED.finditer(log.read_bytes()[settled:].decode())]
        assert not again, f"applied again after convergence: {len(again)} objects: {again[:5]}"

        with plane.api_client() as api_client:  # the watches are alive again: a deletion is seen and repaired
            client.CoreV1Api(api_client).delete_namespaced_config_map("cm-042", namespace("beta"))
        daemon.wait_for("cm-042 re-created from Git", lambda: ("ConfigMap", "cm-042") in live(plane, "beta")[0],
                        timeout=30)
        assert "Traceback" not in log.read_text()
        daemon.stop()
        assert daemon.proc.returncode == 0, tail(log)
    finally:
        kill9(daemon)
        remote.repo.close()
        left = stop_leftovers(tmp_path)
    assert not left, f"processes left running under {tmp_path}: {left}"
