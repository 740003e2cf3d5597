"""Real-Ray tests of reconciler.targets.local.runtime: real `ray start` nodes on this machine, no mocks.

Two module-scoped clusters keep the wall time low on 2 cores: "alpha" (head + 2 "small" workers,
started here) and "beta" (head + 1 "big" worker, started by a separate daemon process that is then
killed with SIGKILL). The last tests shrink and finally destroy alpha, so they come last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from reconciler.targets.local.nodes import NodeSpec
from reconciler.targets.local.runtime import LocalRayCluster
from tests.eventually import eventually

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
PRINT_RESOURCES = 'python -c "import ray; ray.init(); print(ray.cluster_resources())"'
SLEEPER = 'python -c "import ray, time; ray.init(); time.sleep(300)" {tag}'  # tag: findable in /proc
DAEMON = """
import sys, time
from pathlib import Path
from reconciler.targets.local.nodes import NodeSpec
from reconciler.targets.local.runtime import LocalRayCluster
cluster = LocalRayCluster.start("beta", NodeSpec("head", num_cpus=1), Path(sys.argv[1]))
cluster.add_worker(NodeSpec("big", num_cpus=2))
Path(sys.argv[2]).touch()
time.sleep(600)
"""


def running_job(cluster: LocalRayCluster, submission_id: str) -> None:
    eventually(lambda: cluster.dashboard.job_info(submission_id)["status"] == "RUNNING", 60, 0.5,
               f"job {submission_id} to run")


def finished_job(cluster: LocalRayCluster, submission_id: str) -> dict:
    def terminal() -> dict | None:
        info = cluster.dashboard.job_info(submission_id)
        return info if info and info["status"] in ("SUCCEEDED", "FAILED", "STOPPED") else None
    return eventually(terminal, 120, 0.5, f"job {submission_id} to finish")


def running(pid: int) -> bool:
    """os.kill(pid, 0) succeeds and it is no zombie (dead, waiting to be reaped: this machine's
    PID 1 reaps orphans lazily)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def leftovers(pids: set[int], *needles: str) -> list[str]:
    """Live processes that are one of pids, in a session led by one of them, or mention a needle."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if stat[0] != "Z" and (int(entry) in pids or int(stat[3]) in pids
                               or any(needle in cmdline for needle in needles)):
            found.append(f"{entry}: {cmdline[:120]}")
    return found


def tracked_pids(state_dir: Path, name: str) -> tuple[set[int], str]:
    record = json.loads((state_dir / name / "cluster.json").read_text())
    return {record["head"]["pid"], *(w["pid"] for w in record["workers"])}, record["temp_dir"]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-ray-state")


@pytest.fixture(scope="module")
def alpha(state_dir: Path) -> Iterator[LocalRayCluster]:
    cluster = LocalRayCluster.start("alpha", NodeSpec("head", num_cpus=1), state_dir)
    try:
        for _ in range(2):
            cluster.add_worker(NodeSpec("small", num_cpus=1, resources={"small-slot": 1}))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def beta(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster | None]:
    scratch = tmp_path_factory.mktemp("daemon")
    with open(scratch / "daemon.log", "wb") as log:
        daemon = subprocess.Popen([sys.executable, "-c", DAEMON, str(state_dir), str(scratch / "ready")],
                                  cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: (scratch / "ready").exists() or daemon.poll() is not None, 240, 0.5, "the daemon")
        assert daemon.poll() is None, (scratch / "daemon.log").read_text()
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(10)
        yield LocalRayCluster.adopt("beta", state_dir)
    finally:
        daemon.kill()
        daemon.wait(10)
        if (leftover := LocalRayCluster.adopt("beta", state_dir)) is not None:
            leftover.stop()


def test_a_head_and_two_small_workers_are_alive_in_ray(alpha: LocalRayCluster) -> None:
    assert alpha.dashboard.alive_nodes() == {"head": 1, "small": 2}
    pids = alpha.worker_pids()
    assert list(pids) == ["small"] and len(pids["small"]) == 2
    for pid in pids["small"]:
        os.kill(pid, 0)
    resources = alpha.dashboard.node_resources()
    assert resources["head"]["CPU"] == 1
    assert resources["small"]["CPU"] == 2 and resources["small"]["small-slot"] == 2


def test_a_job_succeeds_and_resubmitting_its_id_creates_no_second_job(alpha: LocalRayCluster) -> None:
    assert alpha.dashboard.submit_job("print-resources", PRINT_RESOURCES, metadata={"owner": "test"}) is True
    assert alpha.dashboard.submit_job("print-resources", "python -c 'print(1)'") is False
    info = finished_job(alpha, "print-resources")
    assert info["status"] == "SUCCEEDED", info["message"]
    assert info["entrypoint"] == PRINT_RESOURCES and info["end_time"] >= info["start_time"] > 1e12
    logs = requests.get(f"{alpha.dashboard_url}/api/jobs/print-resources/logs", headers=alpha.auth_headers,
                        timeout=10).json()["logs"]
    assert "'CPU': 3.0" in logs  # the head's and both workers' CPUs, seen from the job's driver
    jobs = requests.get(f"{alpha.dashboard_url}/api/jobs/", headers=alpha.auth_headers, timeout=10).json()
    assert [j["submission_id"] for j in jobs if j["type"] == "SUBMISSION"] == ["print-resources"]
    assert alpha.dashboard.stop_job("print-resources") is False
    assert alpha.dashboard.job_info("no-such-job") is None


def test_a_fresh_object_adopts_the_running_cluster_and_sees_the_same_nodes(
        alpha: LocalRayCluster, state_dir: Path) -> None:
    adopted = LocalRayCluster.adopt("alpha", state_dir)
    assert adopted is not None
    assert (adopted.dashboard_url, adopted.gcs_address) == (alpha.dashboard_url, alpha.gcs_address)
    assert adopted.worker_pids() == alpha.worker_pids()
    assert adopted.dashboard.alive_nodes() == {"head": 1, "small": 2}


def test_a_cluster_survives_a_kill_9_of_the_daemon_that_started_it_and_is_adopted(
        beta: LocalRayCluster | None) -> None:
    assert beta is not None
    assert beta.dashboard.alive_nodes() == {"head": 1, "big": 1}
    assert len(beta.worker_pids()["big"]) == 1
    assert beta.dashboard.node_resources()["big"]["CPU"] == 2


def test_two_clusters_at_once_each_run_a_job(alpha: LocalRayCluster, beta: LocalRayCluster | None) -> None:
    assert beta is not None and beta.dashboard_url != alpha.dashboard_url
    assert alpha.dashboard.submit_job("on-alpha", PRINT_RESOURCES)
    assert beta.dashboard.submit_job("on-beta", PRINT_RESOURCES)
    for cluster, job in ((alpha, "on-alpha"), (beta, "on-beta")):
        info = finished_job(cluster, job)
        assert info["status"] == "SUCCEEDED", f"{job}: {info['message']}"


def test_stop_leaves_no_process_of_the_cluster_behind(beta: LocalRayCluster | None, state_dir: Path) -> None:
    assert beta is not None
    assert beta.dashboard.submit_job("still-running", SLEEPER.format(tag="beta-still-running"))
    running_job(beta, "still-running")
    pids, temp_dir = tracked_pids(state_dir, "beta")
    # The job's driver (Ray gives it a session of its own); Ray reports RUNNING just before it starts it.
    eventually(lambda: leftovers(set(), "beta-still-running"), 60, 0.5, "the job's driver to start")
    beta.stop()
    assert leftovers(pids, temp_dir, "beta-still-running") == []
    assert not any(running(pid) for pid in pids)
    assert not (state_dir / "beta" / "cluster.json").exists() and not Path(temp_dir).exists()
    assert LocalRayCluster.adopt("beta", state_dir) is None


def test_stopping_a_running_job_stops_it(alpha: LocalRayCluster) -> None:
    assert alpha.dashboard.submit_job("sleeper", SLEEPER.format(tag="alpha-sleeper"))
    running_job(alpha, "sleeper")
    assert alpha.dashboard.stop_job("sleeper") is True
    assert finished_job(alpha, "sleeper")["status"] == "STOPPED"
    eventually(lambda: not leftovers(set(), "alpha-sleeper"), 60, 0.5, "the job's driver to exit")


def test_removing_a_worker_leaves_one_small_node(alpha: LocalRayCluster) -> None:
    before = alpha.worker_pids()["small"]
    assert alpha.remove_worker("small") is True
    eventually(lambda: alpha.dashboard.alive_nodes() == {"head": 1, "small": 1}, 60, 0.5, "Ray to see one small node")
    assert alpha.worker_pids() == {"small": before[:1]}
    assert leftovers({before[1]}, "/no/such/temp/dir") == []
    assert alpha.remove_worker("no-such-group") is False


def test_adopting_a_cluster_whose_head_died_returns_none_changes_nothing_and_stop_cleans_up(
        alpha: LocalRayCluster, state_dir: Path) -> None:
    pids, temp_dir = tracked_pids(state_dir, "alpha")
    head_pid = json.loads((state_dir / "alpha" / "cluster.json").read_text())["head"]["pid"]
    os.killpg(head_pid, signal.SIGKILL)  # the head node's own processes; its Ray workers live on
    eventually(lambda: not running(head_pid), 60, 0.5, "the head to die")
    record = (state_dir / "alpha" / "cluster.json").read_bytes()
    assert LocalRayCluster.adopt("alpha", state_dir) is None  # a look (observe, plan) acts on nothing
    assert (state_dir / "alpha" / "cluster.json").read_bytes() == record
    dead = LocalRayCluster.load("alpha", state_dir)
    assert dead is not None
    dead.stop()  # what the target does before it starts the cluster again
    assert leftovers(pids, temp_dir) == []
    assert not (state_dir / "alpha" / "cluster.json").exists()
