"""`ray-gitops reconcile` against the daemon as a subprocess (its Git poll interval an hour, so only the ask
fetches): real Git, the control socket, no Ray (ConfigMaps on the local target)."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NEIGHBOURS, GitRemote, write_neighbours
from tests.daemon import DaemonProcess

pytestmark = [pytest.mark.e2e]
ENV = "asked"


def environment(name: str) -> str:
    return (f"apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: {{name: {name}}}\n"
            "spec: {target: {local: {}}, interval: 1h}\n")


def reconcile(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "reconcile", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=120)


def applied(state: Path, env: str) -> str:
    out = subprocess.run([sys.executable, "-m", "reconciler", "history", "--environment", env, "--state-dir",
                          str(state), "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return rows[0]["revision"] if rows else ""


def test_reconcile_fetches_and_waits_for_the_named_environment_and_fails_plainly(remote: GitRemote,
                                                                               tmp_path: Path) -> None:
    remote.write(f"environments/{ENV}/environment.yaml", environment(ENV))
    write_neighbours(remote, interval="1h")
    first = remote.commit("one environment and two neighbours")
    state = tmp_path / "state"
    daemon = DaemonProcess(remote.url, state, tmp_path / "daemon.log", ["--interval", "1h"])
    try:
        daemon.wait_for("the first reconciles", daemon.ready, timeout=60)
        sock = state / "control.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600

        remote.write(f"environments/{ENV}/settings.yaml",
                     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {v: '2'}\n")
        second = remote.commit("a ConfigMap the daemon learns of only when asked")
        assert applied(state, ENV) == first
        done = reconcile(state, "--environment", ENV)
        assert done.returncode == 0, done.stderr
        assert f"fetched {second[:12]}" in done.stdout
        assert f"{ENV}: success, Synced, Healthy at {second[:12]}" in done.stdout, done.stdout
        assert applied(state, ENV) == second  # finished when the command returned
        assert not any(line.startswith(NEIGHBOURS) for line in done.stdout.splitlines())  # not waited for

        everything = reconcile(state, "-o", "json")
        assert everything.returncode == 0, everything.stderr
        answer = json.loads(everything.stdout)
        assert sorted(r["environment"] for r in answer["results"]) == sorted([ENV, *NEIGHBOURS])
        assert {r["revision"] for r in answer["results"]} == {second}

        unknown = reconcile(state, "--environment", "nosuch")
        assert unknown.returncode == 2
        assert "unknown environment(s) nosuch" in unknown.stderr

        remote.write(f"environments/{ENV}/broken.yaml", "kind: [\n")
        broken = remote.commit("a file that does not parse")
        failed = reconcile(state, "--environment", ENV)
        assert failed.returncode == 1
        assert f"{ENV}: error, Failed" in failed.stdout, failed.stdout
        assert applied(state, ENV) == second and broken != second
    finally:
        daemon.stop()
    assert not sock.exists()
    gone = reconcile(state, "--environment", ENV)
    assert gone.returncode == 1
    assert f"no daemon is running with state dir {state}" in gone.stderr
