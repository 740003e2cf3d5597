"""Promotion through the daemon as a process: one commit to a shared base reaches dev, then staging,
then prod, each started by the previous one becoming Healthy at that revision (intervals are an hour:
only the gates move it along); the status page's API shows the chain and what each step waits for."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import GitRemote, write_neighbours
from tests.daemon import DaemonProcess
from tests.receiver import Receiver
from tests.unit.test_promotion import environment, settings

pytestmark = [pytest.mark.e2e]
CHAIN = ("dev", "staging", "prod")


def history(state: Path, env: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "reconciler", "history", "--environment", env, "--state-dir",
                          str(state), "-o", "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_one_base_commit_rolls_through_the_chain_in_order(remote: GitRemote, tmp_path: Path) -> None:
    remote.write("bases/app/settings.yaml", settings("1"))
    for env, deps in zip(CHAIN, ((), ("dev",), ("staging",)), strict=True):
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


def api(daemon: DaemonProcess) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/api/v1/environments", timeout=5) as resp:
        return json.loads(resp.read())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120)


def test_the_page_shows_the_chain_in_order_with_what_each_step_waits_for_and_the_gauge_drops_to_0(
        remote: GitRemote, tmp_path: Path, receiver: Receiver) -> None:
    """... and the chain's notifications say who waits and who was promoted."""
    remote.write("bases/app/settings.yaml", settings("1"))
    for env, deps in zip(CHAIN, ((), ("dev",), ("staging",)), strict=True):
        remote.write(f"environments/{env}/environment.yaml", environment(env, *deps).replace(
            "  base: bases/app", "  interval: 1h\n  base: bases/app"))
    write_neighbours(remote, interval="1h")
    first = remote.commit("version 1")
    state = tmp_path / "state"
    daemon = DaemonProcess(remote.url, state, tmp_path / "daemon.log", [
        "--interval", "1h", "--notify-url", f"http://127.0.0.1:{receiver.port}/hook"])
    events = lambda env: [(e["event"], e["revision"], e["attempted"])  # noqa: E731
                          for e in receiver.events("/hook", env)]
    waiting = lambda env, dep: daemon.metric("ray_gitops_promotion_waiting", environment=env,  # noqa: E731
                                             dependency=dep)
    try:
        daemon.wait_for("version 1 everywhere", lambda: all(
            history(state, env) and history(state, env)[0]["revision"] == first for env in CHAIN), timeout=60)
        assert (waiting("staging", "dev"), waiting("prod", "staging")) == (0, 0)  # waited for version 1; now 0
        assert cli("suspend", "--environment", "dev", "--state-dir", str(state)).returncode == 0
        remote.write("bases/app/settings.yaml", settings("2"))
        second = remote.commit("version 2")
        asked = cli("reconcile", "--state-dir", str(state))
        assert asked.returncode == 0, asked.stderr
        assert "staging: noop, Waiting" in asked.stdout and "dev: noop, Suspended" in asked.stdout, asked.stdout

        chains = api(daemon)["promotions"]
        assert [[step["environment"] for step in chain] for chain in chains] == [list(CHAIN)]  # neighbours: none
        steps = {step["environment"]: step for step in chains[0]}
        assert {env: steps[env]["revision"] for env in CHAIN} == dict.fromkeys(CHAIN, first)
        assert steps["dev"]["waiting_for"] is None and steps["dev"]["sync_status"] == "Suspended"
        assert (steps["staging"]["waiting_for"]["environments"], steps["staging"]["waiting_for"]["revision"]) == (
            ["dev"], second)
        assert steps["prod"]["waiting_for"]["environments"] == ["staging"]
        assert steps["prod"]["depends_on"] == ["staging"]
        assert (waiting("staging", "dev"), waiting("prod", "staging")) == (1, 1)
        daemon.wait_for("the waiting notifications", lambda: events("prod")[-1:] == [("waiting", first, second)],
                        timeout=10)
        assert events("staging")[-1] == ("waiting", first, second)

        assert cli("resume", "--environment", "dev", "--state-dir", str(state)).returncode == 0
        assert cli("reconcile", "--environment", "dev", "--state-dir", str(state)).returncode == 0
        daemon.wait_for("version 2 everywhere", lambda: all(
            history(state, env)[0]["revision"] == second for env in CHAIN), timeout=60)
        daemon.wait_for("the gauges at 0", lambda: (waiting("staging", "dev"), waiting("prod", "staging")) == (0, 0),
                        timeout=20)
        steps = {step["environment"]: step for step in api(daemon)["promotions"][0]}
        assert {env: (steps[env]["revision"], steps[env]["waiting_for"]) for env in CHAIN} == dict.fromkeys(
            CHAIN, (second, None))
        daemon.wait_for("prod promoted", lambda: events("prod")[-1:] == [("promoted", second, second)], timeout=10)
        climbs = [e for e, _, _ in events("staging")]  # version 1 waited too, unless dev was Healthy before it looked
        assert climbs[-2:] == ["waiting", "promoted"] and climbs[:-2] in (["waiting", "promoted"], ["promoted"]), climbs
    finally:
        daemon.stop()
