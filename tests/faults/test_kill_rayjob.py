"""Drill: `kill -9` of the daemon during a RayJob submission, 5 times, on real local Ray, beside two
cheap environments.

Each round commits a new RayJob, wakes the daemon with a signed webhook, waits until the run is claimed
in the ledger (written just before the submission) and kills the daemon after a random delay in
[0, window]. `window` (claim to submitted: the job sent to Ray's Jobs API and its record written) is
measured first on a job that is not killed, in a process that already imported Ray's SDK; a fresh
process spends it importing the SDK. The daemon is then started again. Every job must have run exactly
once: one SUBMISSION job per RayJob in Ray's Jobs API, one line per job in a file the entrypoints
append to, one run in the ledger, and one "finished" count across every daemon's life.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from reconciler.targets.local.runtime import LocalRayCluster
from tests.conftest import NEIGHBOURS, GitRemote, stop_local_clusters, write_neighbours
from tests.daemon import DaemonProcess
from tests.faults.drill import LedgerView, assert_clean_logs, kill9, seeded_rng, stop_leftovers, wait_for_line

pytestmark = [pytest.mark.faults, pytest.mark.e2e, pytest.mark.ray]
ENV = "jobs"
ENVIRONMENTS = (ENV, *NEIGHBOURS)
KILLS = 5
SECRET = "fault-drill-webhook-secret"
CLUSTER = """apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: demo}
spec:
  headGroupSpec:
    rayStartParams: {num-cpus: "1"}
    template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
"""


def rayjob(name: str, marker: Path) -> str:
    """A RayJob on cluster `demo` whose entrypoint appends its name to `marker` (one line per run)."""
    script = f"open({str(marker)!r}, 'a').write({name!r} + chr(10))"
    return (f"apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {{name: {name}}}\nspec:\n"
            f"  clusterSelector: {{ray.io/cluster: demo}}\n"
            f"  entrypoint: {json.dumps('python -c ' + json.dumps(script))}\n")


def post_webhook(port: int) -> None:
    body = b"{}"
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/git", data=body, method="POST",
                                     headers={"X-Signature-256": signature, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 202


def submissions(cluster: LocalRayCluster) -> Counter[str]:
    """RayJob name -> SUBMISSION jobs Ray knows for it (submission ids are `jobs-<name>-<hash10>`)."""
    request = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/", headers=cluster.auth_headers)
    with urllib.request.urlopen(request, timeout=10) as resp:
        jobs = json.loads(resp.read())
    return Counter(re.sub(rf"^{ENV}-(.*)-[0-9a-f]{{10}}$", r"\1", j["submission_id"])
                   for j in jobs if j.get("type") == "SUBMISSION")


def test_kill9_during_rayjob_submissions_runs_each_job_exactly_once(remote: GitRemote, tmp_path: Path) -> None:
    rng, seed = seeded_rng("kill -9 drill, RayJob submissions")
    remote.write(f"environments/{ENV}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                 f"metadata: {{name: {ENV}}}\nspec: {{target: {{local: {{}}}}, interval: 1s}}\n")
    remote.write(f"environments/{ENV}/raycluster.yaml", CLUSTER)
    write_neighbours(remote)
    sha = remote.commit("a Ray cluster and two neighbours")
    state, marker, logs = tmp_path / "state", tmp_path / "runs.txt", tmp_path / "logs"
    logs.mkdir()
    ledger = LedgerView(state / "ledger.sqlite3")
    daemon: DaemonProcess | None = None

    def start(name: str) -> DaemonProcess:
        started = DaemonProcess(remote.url, state, logs / f"{name}.log", ["--interval", "1s"],
                                {"RAY_GITOPS_WEBHOOK_SECRET": SECRET})
        started.wait_for("/readyz", started.ready, timeout=120)
        return started

    def claim_seen(job: str) -> float:
        """When the ledger first holds a run of `job` (written just before it is submitted), polled every 5 ms."""
        assert daemon is not None
        daemon.wait_for(f"the run of {job} claimed", lambda: any(
            j == job for j, _ in ledger.runs(ENV).values()), timeout=60, poll=0.005)
        return time.monotonic()

    def converged(what: str) -> float:
        assert daemon is not None
        daemon.wait_for(what, lambda: ledger.converged(ENVIRONMENTS, sha), timeout=120, poll=0.01)
        return time.monotonic()

    jobs: list[str] = []
    try:
        daemon = start("initial")
        converged("the cluster")
        cluster = LocalRayCluster.adopt(f"{ENV}_demo", state / "local" / "clusters")
        assert cluster is not None

        def add_job(name: str) -> None:
            nonlocal sha
            jobs.append(name)
            remote.write(f"environments/{ENV}/{name}.yaml", rayjob(name, marker))
            sha = remote.commit(name)

        windows = []  # job-0: the process imports Ray's SDK on its first submission; job-1: it has it
        for name in ("job-0", "job-1"):
            add_job(name)
            post_webhook(daemon.port)
            claimed = claim_seen(name)
            windows.append(wait_for_line(daemon.log, f"RayJob/default/{name} submitted", daemon=daemon) - claimed)
            converged(f"{name} applied")
        window = windows[1]
        print(f"calibration: from the run claimed in the ledger to submitted {windows[0]:.2f}s (Ray's SDK imported "
              f"first), then {window:.2f}s; kills at U(0, {window:.2f})s after the claim")

        kill9(daemon)
        daemon = start("round-1")
        landed: list[str] = []
        for round_ in range(1, KILLS + 1):
            name = f"job-{round_ + 1}"
            add_job(name)
            delay = rng.uniform(0, window)
            post_webhook(daemon.port)
            claimed = claim_seen(name)
            time.sleep(max(0.0, claimed + delay - time.monotonic()))
            kill9(daemon)
            in_ray = submissions(cluster)[name]
            runs = [sid for sid, (job, _) in ledger.runs(ENV).items() if job == name]
            where = f"seed {seed}, round {round_}, kill {delay:.2f}s after the claim"
            recorded = (state / "local" / "objects" / ENV / f"RayJob.default.{name}.json").exists()
            landed.append(f"{delay:.2f}s: " + ("revision applied" if ledger.converged(ENVIRONMENTS, sha) else
                                               "submitted and recorded" if recorded else
                                               "in Ray, not recorded" if in_ray else "claimed, not in Ray"))
            assert ledger.integrity() == "ok", where
            assert in_ray <= 1 and (not in_ray or len(runs) == 1), f"{where}: in Ray {in_ray}, ledger {runs}"
            daemon = start(f"round-{round_ + 1}" if round_ < KILLS else "final")
        print(f"{KILLS} kills, where they landed: {landed}")

        converged("every job applied")
        daemon.wait_for("every run finished", lambda: all(
            r == "succeeded" for _, r in ledger.runs(ENV).values()) and len(ledger.runs(ENV)) == len(jobs), timeout=120)
        check_exactly_once(jobs, cluster, marker, ledger, logs, state, seed)
        daemon.stop()
        assert daemon.proc.returncode == 0
        assert_clean_logs(logs, seed)
    finally:
        if daemon is not None:
            kill9(daemon)
        stop_local_clusters(state)  # a kill -9 leaves them
        remote.repo.close()
        left = stop_leftovers(tmp_path)
    assert not left, f"processes left running under {tmp_path}: {left}"


def check_exactly_once(jobs: list[str], cluster: LocalRayCluster, marker: Path, ledger: LedgerView, logs: Path,
                       state: Path, seed: int) -> None:
    """Ray, the entrypoints, the ledger, the metric's log lines, the status and the history agree: once each."""
    where = f"seed {seed}"
    assert submissions(cluster) == Counter(dict.fromkeys(jobs, 1)), where
    assert Counter(marker.read_text().split()) == Counter(dict.fromkeys(jobs, 1)), where
    runs = ledger.runs(ENV)
    assert sorted(job for job, _ in runs.values()) == sorted(jobs) and {r for _, r in runs.values()} == {"succeeded"}
    finished = Counter(m.group(1) for log in logs.iterdir()
                       for m in re.finditer(rf"RayJob (\S+) run {ENV}-\S+ finished: succeeded", log.read_text()))
    assert finished == Counter(dict.fromkeys(jobs, 1)), f"{where}: counted in rayjob_runs_total: {finished}"
    status = {s["environment"]: s for s in json.loads(subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--state-dir", str(state), "-o", "json"],
        capture_output=True, text=True, check=True).stdout)}[ENV]
    assert (status["sync_status"], status["health_status"]) == ("Synced", "Healthy"), status
    assert {j: s["status"] for j, s in status["detail"]["jobs"].items()} == dict.fromkeys(jobs, "SUCCEEDED")
    history = json.loads(subprocess.run(
        [sys.executable, "-m", "reconciler", "history", "--environment", ENV, "--state-dir", str(state), "-o", "json"],
        capture_output=True, text=True, check=True).stdout)
    assert {h["result"] for h in history} == {"success"}, history
    inventory = {(kind, name) for kind, _, name in ledger.inventory(ENV)}
    assert inventory == {("RayCluster", "demo"), *(("RayJob", j) for j in jobs)}, where
