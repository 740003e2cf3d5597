"""The daemon as a subprocess with 20 environments on the local target (ConfigMaps, no Ray): ready,
standard process metrics, a fetch failure seen once and as Stale while the last good revision stays
applied (drift still repaired), recovery by itself to a commit pushed meanwhile, and a prompt SIGTERM.
The Git-unreachable fault drill (marker `faults` too)."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import GitRemote, write_neighbours
from tests.daemon import DaemonProcess
from tests.eventually import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.faults]
ENVIRONMENTS = tuple(f"team-{i:02d}" for i in range(20))
GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds


def status(state: Path) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "reconciler", "status", "--state-dir", str(state), "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    return {s["environment"]: s for s in json.loads(out)}


def stored(state: Path, env: str) -> dict[str, str]:
    """The local target's records of `env` (file name -> content)."""
    return {p.name: p.read_text() for p in sorted((state / "local" / "objects" / env).glob("*.json"))}


def test_twenty_environments_ready_stale_on_fetch_failure_recover_and_stop_promptly(
        remote: GitRemote, tmp_path: Path) -> None:
    write_neighbours(remote, ENVIRONMENTS, interval="1s")
    sha = remote.commit("twenty environments")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    daemon = DaemonProcess(remote.url, state, log, ["--interval", "1s", "--concurrency", "4"])
    try:
        daemon.wait_for("/readyz", daemon.ready, timeout=60)
        assert {e: s["sync_status"] for e, s in status(state).items()} == dict.fromkeys(ENVIRONMENTS, "Synced")
        for family in ("process_resident_memory_bytes", "process_open_fds", "python_gc_objects_collected_total"):
            labels = {"generation": "0"} if family.startswith("python_gc") else {}
            assert daemon.metric(family, **labels) is not None, family
        succeeded = daemon.metric("ray_gitops_git_last_fetch_success_timestamp_seconds")
        assert succeeded is not None and abs(succeeded - time.time()) < 30

        applied = {env: stored(state, env) for env in ENVIRONMENTS}
        away = tmp_path / "away.git"
        shutil.move(remote.bare_path, away)  # the remote is gone for a while
        daemon.wait_for("every environment Stale", lambda: {
            s["sync_status"] for s in status(state).values()} == {"Stale"}, timeout=60)
        last_success = daemon.metric("ray_gitops_git_last_fetch_success_timestamp_seconds")
        noops = daemon.metric("ray_gitops_reconcile_total", environment="team-03", result="noop") or 0
        drifted = state / "local" / "objects" / "team-03" / "ConfigMap.default.settings.json"
        drifted.unlink()  # drift while Stale: the last good revision is still what gets applied
        daemon.wait_for("the drift repaired from the last good revision", drifted.exists, timeout=30)
        failed = eventually(lambda: daemon.fetches("error"), 10, 0.2, "the count of failed fetches")  # 0: no answer
        daemon.wait_for("several more failing polls", lambda: daemon.fetches("error") >= failed + 3, timeout=30)
        assert {env: stored(state, env) for env in ENVIRONMENTS} == applied
        assert (daemon.metric("ray_gitops_reconcile_total", environment="team-03", result="noop") or 0) > noops
        stale = status(state)["team-07"]
        assert stale["revision"] == sha and stale["message"].startswith("Stale: fetch failing since ")
        assert daemon.metric("ray_gitops_environment_info", environment="team-07", target="local",
                             revision=sha[:12], sync_status="Stale", health_status="Healthy") == 1
        failures = [line for line in log.read_text().splitlines() if "ERROR" in line]
        assert len(failures) == 1 and "git fetch of" in failures[0], failures
        assert daemon.metric("ray_gitops_git_last_fetch_success_timestamp_seconds") == last_success

        remote.write("environments/team-07/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     "metadata: {name: settings}\ndata: {owner: team-07, changed: during-the-outage}\n")
        remote.repo.git.add(A=True)
        remote.repo.index.commit("a change pushed while the daemon cannot fetch")
        remote.repo.git.push(str(away), "main")
        sha = remote.repo.head.commit.hexsha
        shutil.move(away, remote.bare_path)
        daemon.wait_for("every environment Synced again, at the new commit", lambda: {
            (s["sync_status"], s["revision"]) for s in status(state).values()} == {("Synced", sha)}, timeout=60)
        assert "works again" in log.read_text()
        assert '"changed": "during-the-outage"' in stored(state, "team-07")["ConfigMap.default.settings.json"]

        started = time.monotonic()
        daemon.stop(signal.SIGTERM, timeout=GRACE_SECONDS)
        stopped = time.monotonic() - started
        print(f"SIGTERM to exit with 20 environments: {stopped:.2f}s")
        assert daemon.proc.returncode == 0 and stopped < GRACE_SECONDS
        assert "Traceback" not in log.read_text()
    finally:
        daemon.stop(signal.SIGKILL)
