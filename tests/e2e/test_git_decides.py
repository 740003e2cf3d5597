"""Git decides, with the daemon as a process on the local target (ConfigMaps, no Ray): an environment
removed from Git is pruned and reported Removed (with a `removed` notification); an unsigned head pushed to a
running daemon is reported Unverified (and notified) at the next poll, not at each environment's interval; a
`plan` of another repository on the daemon's state dir changes nothing the daemon does; a daemon restarted
while the branch head does not verify goes on applying the last verified revision; `run --once` follows a
dependsOn chain and refuses an unselected dependency. Each prints the time it measured."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import GitRemote, write_neighbours
from tests.daemon import DaemonProcess
from tests.eventually import eventually
from tests.receiver import Receiver
from tests.unit.test_signatures import Signers, agents

pytestmark = pytest.mark.e2e
TEAMS = ("team-1", "team-2", "team-3", "team-4", "team-5", "team-6")


def status(state: Path) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "reconciler", "status", "--state-dir", str(state), "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {s["environment"]: s for s in json.loads(out)}


def records(state: Path, env: str) -> dict[str, dict]:
    """The local target's records of `env` (file name -> record)."""
    return {p.name: json.loads(p.read_text()) for p in sorted((state / "local" / "objects" / env).glob("*.json"))}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=120)


def test_an_environment_removed_from_git_is_pruned_and_reported_removed(remote: GitRemote, tmp_path: Path,
                                                                        receiver: Receiver) -> None:
    write_neighbours(remote, TEAMS, interval="1s")
    remote.commit("six environments")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    daemon = DaemonProcess(remote.url, state, log, ["--interval", "1s", "--notify-url",
                                                    f"http://127.0.0.1:{receiver.port}/hook"])
    try:
        daemon.wait_for("/readyz", daemon.ready, timeout=60)
        assert records(state, "team-5")
        times = []
        for attempt in range(3):
            remote.repo.git.rm("-r", "-q", "environments/team-5")
            gone = remote.commit(f"team-5 leaves ({attempt})")
            started = time.monotonic()
            daemon.wait_for("team-5 pruned", lambda: not records(state, "team-5"), timeout=30, poll=0.1)
            times.append(time.monotonic() - started)
            row = status(state)["team-5"]
            assert (row["sync_status"], row["revision"]) == ("Removed", gone)
            assert row["message"] == f"removed from Git at {gone[:12]}: 1 object(s) pruned"
            assert daemon.metric("ray_gitops_environment_info", environment="team-5", target="local",
                                 revision=gone[:12], sync_status="Removed", health_status="Unknown") is None
            history = json.loads(cli("history", "--environment", "team-5", "--state-dir", str(state), "-o",
                                     "json").stdout)
            assert (history[0]["revision"], history[0]["result"]) == (gone, "removed")
            daemon.wait_for("the removed notification", lambda gone=gone: any(
                e["event"] == "removed" and e["attempted"] == gone for e in receiver.events("/hook", "team-5")),
                            timeout=10)
            write_neighbours(remote, ("team-5",), interval="1s")
            back = remote.commit(f"team-5 is back ({attempt})")
            daemon.wait_for("team-5 back", lambda back=back: status(state)["team-5"]["revision"] == back, timeout=30)
        print(f"environment removed from Git -> its objects pruned: median {sorted(times)[1]:.2f}s "
              f"({', '.join(f'{t:.2f}' for t in times)}; Git poll 1s)")
        assert all(records(state, team) for team in TEAMS)
        assert {s["sync_status"] for s in status(state).values()} == {"Synced"}

        for team in TEAMS[:4]:
            remote.repo.git.rm("-r", "-q", f"environments/{team}")
        held = remote.commit("four of six leave")
        daemon.wait_for("the removal guard refuses", lambda: daemon.metric("ray_gitops_removals_refused") == 4,
                        timeout=30)
        rows = status(state)
        assert all(rows[t]["sync_status"] == "OutOfSync" and rows[t]["message"].startswith(
            f"removal refused: left Git at {held[:12]}, but 4 of 6 environments left Git at once") for t in TEAMS[:4])
        assert all(records(state, team) for team in TEAMS)
        fetches = eventually(lambda: daemon.fetches("success"), 10, 0.2, "the count of fetches")  # 0: no answer
        daemon.wait_for("three more polls", lambda: daemon.fetches("success") >= fetches + 4, timeout=30)
        # (four more fetches: the three polls before the last one decided): still nothing removed, and said once
        assert all(records(state, team) for team in TEAMS)
        assert log.read_text().count("removal refused at revision") == 1
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


def test_a_plan_of_another_repository_on_the_daemons_state_dir_changes_nothing_it_does(
        remote: GitRemote, tmp_path: Path) -> None:
    write_neighbours(remote, ("a", "b"), interval="1s")
    remote.commit("a and b")
    other = GitRemote(tmp_path / "other")
    write_neighbours(other, ("c",), interval="1s")
    other.commit("only c")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    daemon = DaemonProcess(remote.url, state, log, ["--interval", "1s"])
    try:
        daemon.wait_for("/readyz", daemon.ready, timeout=60)
        remotes = sorted(p.read_text() for p in (state / "git").glob("*/config"))
        for command in ("plan", "diff", "render"):
            done = cli(command, "--repo", other.url, "--environment", "c", "--state-dir", str(state))
            assert done.returncode in (0, 1), done.stderr
        reconciles = daemon.metric("ray_gitops_reconcile_total", environment="a", result="noop") or 0
        daemon.wait_for("three more reconciles of a", lambda: (daemon.metric(
            "ray_gitops_reconcile_total", environment="a", result="noop") or 0) >= reconciles + 3, timeout=30)
        assert sorted(p.read_text() for p in (state / "git").glob("*/config")) == remotes
        assert set(status(state)) == {"a", "b"} and all(records(state, env) for env in ("a", "b"))
        assert not (state / "local" / "objects" / "c").exists()
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gpg", "ssh-keygen")), reason="needs gpg, ssh-keygen")
def test_a_daemon_restarted_on_an_unverified_head_keeps_applying_the_last_verified_revision(
        remote: GitRemote, tmp_path: Path) -> None:
    signers = Signers(remote, tmp_path)
    try:
        restarted_on_an_unverified_head(remote, signers, tmp_path)
    finally:
        signers.close()


def restarted_on_an_unverified_head(remote: GitRemote, signers: Signers, tmp_path: Path) -> None:
    write_neighbours(remote, ("a",), interval="1s")
    good = signers.commit("a, signed by alice", by="alice")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    args = ["--interval", "1s", "--verify-commits", "head", "--trusted-keys", str(signers.keys)]
    daemon = DaemonProcess(remote.url, state, log, args)
    try:
        daemon.wait_for("/readyz", daemon.ready, timeout=60)
    finally:
        daemon.stop()
    remote.write("environments/a/settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                 "data: {owner: eve}\n")
    bad = signers.commit("a change by eve", by="eve")

    daemon = DaemonProcess(remote.url, state, log, args)
    try:
        started = time.monotonic()
        daemon.wait_for("/readyz", daemon.ready, timeout=60, poll=0.1)
        ready = time.monotonic() - started
        row = status(state)["a"]
        assert (row["revision"], row["sync_status"]) == (good, "Unverified")
        assert row["message"] == (f"Unverified: {bad[:12]}: signed by key {signers.eve}, which is not a trusted key "
                                  "(not in trusted_keys' allowed_signers)")
        assert daemon.metric("ray_gitops_environment_info", environment="a", target="local", revision=good[:12],
                             sync_status="Unverified", health_status="Healthy") == 1
        (settings,) = [r for name, r in records(state, "a").items() if name.startswith("ConfigMap")]
        assert settings["manifest"]["data"] == {"owner": "a"}
        settings_path = state / "local" / "objects" / "a" / "ConfigMap.default.settings.json"
        settings_path.unlink()  # drift: repaired from the last verified revision
        daemon.wait_for("the drift repaired", settings_path.exists, timeout=30)
        print(f"restarted on an unverified head: ready after {ready:.2f}s, applying {good[:12]}")
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0
    assert agents(state / "gnupg") == []


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs ssh-keygen")
def test_an_unsigned_head_pushed_to_a_running_daemon_is_reported_unverified_at_the_next_poll(
        remote: GitRemote, tmp_path: Path, receiver: Receiver) -> None:
    signers = Signers(remote, tmp_path)
    try:
        unsigned_head_pushed(remote, signers, tmp_path, receiver)
    finally:
        signers.close()


def unsigned_head_pushed(remote: GitRemote, signers: Signers, tmp_path: Path, receiver: Receiver) -> None:
    envs = ("a", "b")
    write_neighbours(remote, envs, interval="1h")  # not re-checked within the test: only the new state reports them
    good = signers.commit("a and b, signed by bob", by="bob")
    state, log = tmp_path / "state", tmp_path / "daemon.log"
    daemon = DaemonProcess(remote.url, state, log, [
        "--interval", "1s", "--verify-commits", "head", "--trusted-keys", str(signers.keys), "--notify-url",
        f"http://127.0.0.1:{receiver.port}/hook"])
    try:
        daemon.wait_for("/readyz", daemon.ready, timeout=60)
        daemon.wait_for("promoted", lambda: all(receiver.events("/hook", env) for env in envs), timeout=30)
        remote.write("environments/a/settings.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n"
                      "data: {owner: nobody}\n")
        bad = signers.commit("an unsigned change")
        started = time.monotonic()
        daemon.wait_for("unverified notifications", lambda: all(
            [e["event"] for e in receiver.events("/hook", env)][-1:] == ["unverified"] for env in envs),
                        timeout=10, poll=0.1)
        took = time.monotonic() - started
        rows = status(state)
        for env in envs:
            assert (rows[env]["revision"], rows[env]["sync_status"]) == (good, "Unverified")
            assert rows[env]["message"] == f"Unverified: {bad[:12]}: not signed"
            told = receiver.events("/hook", env)[-1]
            assert (told["sync_status"], told["revision"], told["message"]) == (
                "Unverified", good, rows[env]["message"])
        assert records(state, "a")["ConfigMap.default.settings.json"]["manifest"]["data"] == {"owner": "a"}
        subprocess.run(["git", "-C", str(remote.work_path), "reset", "-q", "--hard", good], check=True)
        subprocess.run(["git", "-C", str(remote.work_path), "push", "-q", "--force", "origin", "main"], check=True)
        started = time.monotonic()
        daemon.wait_for("Synced again", lambda: {row["sync_status"] for row in status(state).values()} == {"Synced"},
                        timeout=10, poll=0.2)
        back = time.monotonic() - started
        print(f"unsigned head pushed -> every environment notified unverified after {took:.2f}s; the branch put back "
              f"on the verified head -> Synced after {back:.2f}s (Git poll 1s, environment interval 1h)")
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


def test_run_once_follows_a_depends_on_chain_and_refuses_a_dependency_not_selected(
        remote: GitRemote, tmp_path: Path) -> None:
    for name, needs in (("dev", ""), ("staging", "dev"), ("prod", "staging")):
        write_neighbours(remote, (name,))
        if needs:
            text = (remote.work_path / f"environments/{name}/environment.yaml").read_text()
            remote.write(f"environments/{name}/environment.yaml",
                         text.replace("interval: 2s}", f"interval: 2s, dependsOn: [{{environment: {needs}}}]}}"))
    sha = remote.commit("a chain")
    state = tmp_path / "state"

    refused = cli("run", "--once", "--repo", remote.url, "--state-dir", str(state), "--environment", "prod")
    assert refused.returncode == 2, refused.stderr
    assert "environment prod depends on staging, which is not selected" in refused.stderr

    done = cli("run", "--once", "--repo", remote.url, "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    rows = status(state)
    assert {env: (rows[env]["revision"], rows[env]["sync_status"]) for env in rows} == dict.fromkeys(
        ("dev", "staging", "prod"), (sha, "Synced"))
    applied = {env: json.loads(cli("history", "--environment", env, "--state-dir", str(state), "-o",
                                   "json").stdout)[0]["applied_at"] for env in ("dev", "staging", "prod")}
    assert applied["dev"] < applied["staging"] < applied["prod"]
