"""The whole loop on the embedded local target: real Git, the daemon as a subprocess, real Ray."""
from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest

from reconciler.targets.local.runtime import LocalRayCluster
from tests.conftest import NEIGHBOURS, GitRemote, stop_local_clusters, write_neighbours
from tests.daemon import DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
TESTDATA = Path(__file__).parent.parent / "testdata"
ENV = "e2e"


def start_daemon(repo: str, state_dir: Path, log: Path) -> DaemonProcess:
    return DaemonProcess(repo, state_dir, log, ["--interval", "1s"])


@pytest.fixture
def state_dir(tmp_path: Path):
    state = tmp_path / "state"
    yield state
    stop_local_clusters(state)


def cluster_yaml(replicas: int) -> str:
    return (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas))


def test_commit_scale_job_revert_and_restart_converge_without_duplicates(remote: GitRemote, state_dir: Path,
                                                                        tmp_path: Path) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", (TESTDATA / "environment-local.yaml").read_text())
    remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(1))
    write_neighbours(remote)
    remote.commit("one worker, and two neighbour environments")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(remote.url, state_dir, log)
    ready = dict(environment=ENV, cluster="demo", group="cpu", state="ready")
    try:
        daemon.wait_for("1 ready worker", lambda: daemon.metric("ray_gitops_raycluster_workers", **ready) == 1)
        assert _get(f"http://127.0.0.1:{daemon.port}/readyz") == 200
        assert _get(f"http://127.0.0.1:{daemon.port}/healthz") == 200

        remote.write(f"environments/{ENV}/raycluster.yaml", cluster_yaml(2))
        scale = remote.commit("two workers")
        daemon.wait_for("2 ready workers", lambda: daemon.metric("ray_gitops_raycluster_workers", **ready) == 2)
        ray = LocalRayCluster.adopt(f"{ENV}_demo", state_dir / "local" / "clusters")
        assert ray is not None and ray.dashboard.alive_nodes() == {"head": 1, "cpu": 2}

        remote.write(f"environments/{ENV}/rayjob.yaml", (TESTDATA / "rayjob.yaml").read_text())
        remote.commit("add a job")
        succeeded = dict(environment=ENV, job="count", result="succeeded")
        daemon.wait_for("the job's run", lambda: daemon.metric("ray_gitops_rayjob_runs_total", **succeeded) == 1)
        assert daemon.metric("ray_gitops_rayjob_duration_seconds_count", environment=ENV, job="count") == 1

        remote.revert(scale)
        daemon.wait_for("1 ready worker after revert",
                        lambda: daemon.metric("ray_gitops_raycluster_workers", **ready) == 1)
        assert ray.dashboard.alive_nodes() == {"head": 1, "cpu": 1}

        gcs, workers = ray.gcs_address, ray.worker_pids()
        daemon.stop(signal.SIGKILL)
        daemon = start_daemon(remote.url, state_dir, log)
        daemon.wait_for("a reconcile after restart",
                        lambda: (daemon.metric("ray_gitops_reconcile_total", environment=ENV, result="noop") or 0) >= 2)
        again = LocalRayCluster.adopt(f"{ENV}_demo", state_dir / "local" / "clusters")
        assert again is not None and again.gcs_address == gcs and again.worker_pids() == workers
        jobs = [j for j in _list_jobs(again) if j.get("type") == "SUBMISSION"]
        assert len(jobs) == 1 and jobs[0]["status"] == "SUCCEEDED"
        assert daemon.metric("ray_gitops_rayjob_runs_total", **succeeded) is None  # never counted twice

        for env in NEIGHBOURS:  # reconciled all along beside the Ray environment
            assert (daemon.metric("ray_gitops_reconcile_total", environment=env, result="noop") or 0) >= 1
            assert daemon.metric("ray_gitops_reconcile_total", environment=env, result="error") is None
        daemon.stop(signal.SIGTERM)
        assert daemon.proc.returncode == 0
        assert not any(_alive(pid) for pid in sum(workers.values(), []))
        with pytest.raises(OSError):
            _list_jobs(again)
    finally:
        daemon.stop(signal.SIGKILL)


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status


def _list_jobs(cluster: LocalRayCluster) -> list[dict]:
    import json
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/", headers=cluster.auth_headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
