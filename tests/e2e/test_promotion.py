"""Promotion through the daemon as a process: one commit to a shared base reaches dev, then staging,
then prod, each started by the previous one becoming Healthy at that revision (intervals are an hour:
only the gates move it along)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GitRemote
from tests.daemon import DaemonProcess
from tests.unit.test_promotion import environment, settings

pytestmark = [pytest.mark.e2e]
CHAIN = ("dev", "staging", "prod")


def history(state: Path, env: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "reconciler", "history", "--environment", env, "--state-dir",
                          str(state), "-o", "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_one_base_commit_rolls_through_the_chain_in_order(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("bases/app/settings.yaml", settings("1"))
    for env, deps in zip(CHAIN, ((), ("dev",), ("staging",))):
        remote.write(f"environments/{env}/environment.yaml", environment(env, *deps).replace(
            "  base: bases/app", "  interval: 1h\n  base: bases/app"))
    first = remote.commit("version 1")
    state = tmp_path / "state"
    daemon = DaemonProcess(remote.url, state, tmp_path / "daemon.log", ["--interval", "1s"])
    try:
        daemon.wait_for("version 1 everywhere", lambda: all(
            history(state, env) and history(state, env)[0]["revision"] == first for env in CHAIN), timeout=60)
        remote.write("bases/app/settings.yaml", settings("2"))
        second = remote.commit("version 2")
        daemon.wait_for("version 2 everywhere", lambda: all(
            history(state, env)[0]["revision"] == second for env in CHAIN), timeout=60)
    finally:
        daemon.stop()
    applied = [history(state, env)[0]["applied_at"] for env in CHAIN]
    assert applied == sorted(applied), applied
    assert applied[-1] - applied[0] < 10, applied  # moved by the gates, not by the (hourly) interval
