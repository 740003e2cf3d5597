"""Drill: `kill -9` of the daemon at 50 random points of a reconcile, on the local target with cheap objects
(ConfigMaps and Secrets: stored, no Ray), three environments at once.

Each round commits a random change (objects added, edited, removed) to every environment, starts the
daemon and kills it after a random delay in [0, window] from the line it prints when its loop starts,
where `window` is measured first: the time the same kind of round takes to converge. After each kill
the ledger must be intact and own everything that is applied; at the end one more start must converge
to Git exactly, with the history, the status and the target agreeing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from reconciler.service.config import derived
from tests.conftest import GitRemote, write_neighbours
from tests.daemon import DaemonProcess
from tests.faults.drill import LedgerView, assert_clean_logs, kill9, seeded_rng, stop_leftovers, tail, wait_for_line

pytestmark = [pytest.mark.faults, pytest.mark.e2e]
ENVIRONMENTS = ("alpha", "beta", "gamma")
KILLS = 50
OBJECTS = 40  # per environment at the start; each round adds 2, edits 3 and removes 1
ANCHOR = "ray-gitops: reconciling"  # printed once the daemon is built, just before its loop starts
APPLIED = re.compile(r"environment \w+: (ConfigMap|Secret)/\S+ (created|configured|deleted) ")  # one per object
BUDGET_SECONDS = 180  # the 50 rounds, on 2 cores


class Content:
    """The ConfigMaps and Secrets of each environment as Git holds them, changed by a seeded RNG."""

    def __init__(self, rng: random.Random, remote: GitRemote) -> None:
        self.rng, self.remote = rng, remote
        self.objects: dict[str, dict[str, tuple[str, dict[str, str]]]] = {env: {} for env in ENVIRONMENTS}
        self._serial = 0
        for env in ENVIRONMENTS:
            remote.write(f"environments/{env}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\n"
                         f"kind: Environment\nmetadata: {{name: {env}}}\nspec: {{target: {{local: {{}}}}, "
                         "interval: 1s}\n")
            for _ in range(OBJECTS):
                self._add(env)

    def _add(self, env: str) -> None:
        self._serial += 1
        kind = self.rng.choice(("ConfigMap", "Secret"))
        self._put(env, f"{kind.lower()}-{self._serial:04d}", kind)

    def _put(self, env: str, name: str, kind: str) -> None:
        data = {f"k{i}": f"{self.rng.getrandbits(64):016x}" for i in range(self.rng.randint(1, 4))}
        self.objects[env][name] = (kind, data)
        field = "data" if kind == "ConfigMap" else "stringData"
        self.remote.write(f"environments/{env}/{name}.yaml", f"apiVersion: v1\nkind: {kind}\n"
                          f"metadata: {{name: {name}}}\n{field}: {json.dumps(data)}\n")

    def change(self) -> None:
        """Per environment: remove 1 object, edit 3, add 2 (`commit` stages it all)."""
        for env, objects in self.objects.items():
            gone = self.rng.choice(sorted(objects))
            del objects[gone]
            (self.remote.work_path / f"environments/{env}/{gone}.yaml").unlink()
            for name in self.rng.sample(sorted(objects), 3):
                self._put(env, name, objects[name][0])
            for _ in range(2):
                self._add(env)

    def refs(self, env: str) -> set[tuple[str, str, str]]:
        return {(kind, "default", name) for name, (kind, _) in self.objects[env].items()}


def stored(state: Path, env: str) -> dict[tuple[str, str, str], dict]:
    """What the local target holds for `env`: (kind, namespace, name) -> manifest as applied."""
    out = {}
    for path in sorted((state / "local" / "objects" / env).glob("*.json")):
        kind, namespace, name = path.name[:-len(".json")].split(".", 2)
        out[(kind, namespace, name)] = json.loads(path.read_text())["manifest"]  # a torn write fails here
    return out


def digest(state: Path, value: str) -> str:
    """A Secret value as the daemon stores it: keyed with the digest key derived from its installation key."""
    key = derived((state / "installation-key").read_bytes(), "secret-digests")
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=60)


def check_after_kill(ledger: LedgerView, state: Path, where: str) -> None:
    """What must hold at any crash point: an intact ledger that owns every applied object, no failure."""
    assert ledger.integrity() == "ok", where
    for env in ENVIRONMENTS:
        applied, owned = set(stored(state, env)), ledger.inventory(env)
        assert applied <= owned, f"{where}: {env} applied but not in the inventory: {sorted(applied - owned)}"
        assert all(result == "success" for _, result in ledger.history(env)), (where, ledger.history(env))


def test_kill9_at_50_random_points_of_reconciles_converges_with_a_consistent_ledger(
        remote: GitRemote, tmp_path: Path) -> None:
    rng, seed = seeded_rng("kill -9 drill, local target")
    content = Content(rng, remote)
    sha = remote.commit("three environments of ConfigMaps and Secrets")
    state, logs = tmp_path / "state", tmp_path / "logs"
    logs.mkdir()
    ledger = LedgerView(state / "ledger.sqlite3")
    daemon: DaemonProcess | None = None

    def start(name: str) -> tuple[DaemonProcess, float]:
        log = logs / f"{name}.log"
        started = DaemonProcess(remote.url, state, log, ["--interval", "1s", "--concurrency", "4"])
        return started, wait_for_line(log, ANCHOR, daemon=started)

    def wait_converged(what: str, timeout: float = 60) -> float:
        assert daemon is not None
        daemon.wait_for(what, lambda: ledger.converged(ENVIRONMENTS, sha), timeout, 0.005)
        return time.monotonic()

    try:
        daemon, _ = start("initial")
        wait_converged("initial sync")
        kill9(daemon)  # a kill at rest, to begin with

        content.change()  # calibration: a round like the drill's, timed, not killed
        sha = remote.commit("calibration")
        daemon, anchor = start("calibration")
        first_apply = wait_for_line(daemon.log, APPLIED, daemon=daemon)
        converged = wait_converged("calibration")
        kill9(daemon)
        windows = {"loop": converged - anchor, "apply": converged - first_apply}
        print(f"calibration: from the loop's start to every environment Synced {windows['loop']:.3f}s, from the "
              f"first object applied {windows['apply']:.3f}s")

        phases: Counter[str] = Counter()
        mid_apply: list[int] = []  # objects applied before each mid-apply kill
        drill_started = time.monotonic()
        for round_ in range(KILLS):  # even rounds: anywhere in the reconcile; odd ones: once applying began
            content.change()
            sha = remote.commit(f"round {round_}")
            daemon, anchor = start(f"round-{round_:02d}")
            after = "apply" if round_ % 2 else "loop"
            if after == "apply":
                anchor = wait_for_line(daemon.log, APPLIED, daemon=daemon)
            delay = rng.uniform(0, windows[after])
            time.sleep(max(0.0, anchor + delay - time.monotonic()))
            kill9(daemon)
            applied = len(APPLIED.findall(daemon.log.read_text()))
            phase = ("after convergence" if ledger.converged(ENVIRONMENTS, sha) else
                     "mid-apply" if applied else "before any apply")
            phases[phase] += 1
            if phase == "mid-apply":
                mid_apply.append(applied)
            check_after_kill(ledger, state, f"seed {seed}, round {round_}, {delay:.3f}s after the {after} anchor")
        drill_seconds = time.monotonic() - drill_started
        print(f"{KILLS} kills in {drill_seconds:.1f}s; where they landed: {dict(phases)}; objects applied before "
              f"each mid-apply kill: {sorted(mid_apply)}")
        assert phases["mid-apply"] >= 10, f"seed {seed}: too few kills landed mid-apply to mean anything: {phases}"
        assert drill_seconds < BUDGET_SECONDS

        daemon, anchor = start("final")
        print(f"final start: converged {wait_converged('after the last kill') - anchor:.2f}s after its loop began")
        check_converged(content, ledger, state, sha, seed)
        assert daemon.metric("ray_gitops_reconcile_total", environment="alpha", result="error") is None
        daemon.stop()
        assert daemon.proc.returncode == 0
        assert_clean_logs(logs, seed)
    finally:
        if daemon is not None:
            kill9(daemon)
        remote.repo.close()  # this process's own `git cat-file` helpers
        left = stop_leftovers(tmp_path)
    assert not left, f"processes left running under {tmp_path}: {left}"


def check_converged(content: Content, ledger: LedgerView, state: Path, sha: str, seed: int) -> None:
    """Git, the target, the inventory, the history and the status agree, and nothing is left to do."""
    statuses = {s["environment"]: s for s in json.loads(cli("status", "--state-dir", str(state), "-o", "json").stdout)}
    for env in ENVIRONMENTS:
        where = f"seed {seed}, {env}"
        assert (statuses[env]["revision"], statuses[env]["sync_status"], statuses[env]["health_status"]) == (
            sha, "Synced", "Healthy"), where
        applied = stored(state, env)
        assert set(applied) == ledger.inventory(env) == content.refs(env), where
        for (kind, _, name), manifest in applied.items():
            data = content.objects[env][name][1]
            assert manifest["data" if kind == "ConfigMap" else "stringData"] == (
                data if kind == "ConfigMap" else {k: digest(state, v) for k, v in data.items()}), f"{where}: {name}"
        history = json.loads(cli("history", "--environment", env, "--state-dir", str(state), "--limit", "500",
                                 "-o", "json").stdout)
        assert history[0]["revision"] == sha and {h["result"] for h in history} == {"success"}, where
        revisions = [h["revision"] for h in history]
        assert len(revisions) == len(set(revisions)), f"{where}: a revision recorded as applied twice"
        plan = cli("plan", "--repo", content.remote.url, "--environment", env, "--state-dir", str(state))
        assert plan.returncode == 0, f"{where}: plan after convergence:\n{plan.stdout}{plan.stderr}"


def test_kill9_between_git_init_and_remote_add_of_the_first_start_converges_on_restart(
        remote: GitRemote, tmp_path: Path) -> None:
    """The first start creates its Git cache with two git commands (`init`, then `remote add origin`). A shim
    in front of the real git kills the daemon (-9) when the second is asked for, the one exact point where a
    kill leaves a cache without its remote; the next start must still fetch and converge."""
    write_neighbours(remote, ENVIRONMENTS)
    sha = remote.commit("three environments")
    real_git = shutil.which("git")
    assert real_git is not None
    shim = tmp_path / "bin" / "git"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\ncase "$*" in *"remote add"*) kill -9 "$PPID"; exit 1 ;; esac\nexec {real_git} "$@"\n')
    shim.chmod(0o755)
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    ledger = LedgerView(state / "ledger.sqlite3")
    daemon = DaemonProcess(remote.url, state, log, ["--interval", "1s"],
                           environ={"PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        assert daemon.proc.wait(60) == -signal.SIGKILL, tail(log)
        assert any((state / "git").glob("*/HEAD"))  # the cache was made, its remote not
        daemon = DaemonProcess(remote.url, state, log, ["--interval", "1s"])
        daemon.wait_for("every environment Synced", lambda: ledger.converged(ENVIRONMENTS, sha), timeout=30)
        assert {env: set(stored(state, env)) for env in ENVIRONMENTS} == dict.fromkeys(
            ENVIRONMENTS, {("ConfigMap", "default", "settings")})
        daemon.stop()
        assert daemon.proc.returncode == 0 and "ERROR" not in log.read_text(), tail(log)
    finally:
        kill9(daemon)
        remote.repo.close()
        left = stop_leftovers(tmp_path)
    assert not left, f"processes left running under {tmp_path}: {left}"
