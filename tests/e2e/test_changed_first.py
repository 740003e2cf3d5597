"""Changed environments first: a new revision reconciles at once the environments whose inputs changed (their
directory, their base) and moves the others to it without a reconcile. The daemon as a process, real Git, the
local target with ConfigMaps (no Ray), a webhook as the only way to learn of a push (`--interval 1h`)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import ADVANCED
from tests.conftest import GitRemote
from tests.e2e.test_webhook import SECRET, Daemon, github

pytestmark = [pytest.mark.e2e]
NAMES = [f"team-{i:02d}" for i in range(30)]
BASED = ("team-00", "team-01")  # these two read bases/shared


def environment(name: str) -> str:
    base = "\n  base: bases/shared" if name in BASED else ""
    return (f"apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: {{name: {name}}}\n"
            f"spec:\n  target: {{local: {{}}}}\n  interval: 1h{base}\n")


def settings(name: str, value: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{owner: {name}, value: '{value}'}}\n"


@pytest.fixture
def daemon(remote: GitRemote, tmp_path: Path) -> Iterator[Daemon]:
    for name in NAMES:
        remote.write(f"environments/{name}/environment.yaml", environment(name))
        remote.write(f"environments/{name}/settings.yaml", settings(name, "1"))
    remote.write("bases/shared/shared.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\n"
                 "data: {value: '1'}\n")
    remote.commit("thirty environments, two on a base")
    (tmp_path / "secret").write_text(SECRET)
    started = Daemon(remote.url, tmp_path / "state", tmp_path / "daemon.log",
                     {"RAY_GITOPS_WEBHOOK_SECRET_FILE": str(tmp_path / "secret")})
    try:
        started.wait_for("every environment reconciled", lambda: started.ready(), timeout=60)
        yield started
    finally:
        started.stop()


def reconciles(daemon: Daemon) -> dict[str, float]:
    return {name: sum(daemon.metric("ray_gitops_reconcile_total", environment=name, result=r) or 0
                      for r in ("success", "noop", "error")) for name in NAMES}


def cli(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "reconciler", *args, "-o", "json"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)


def push(remote: GitRemote, daemon: Daemon, message: str, files: dict[str, str]) -> str:
    for path, text in files.items():
        remote.write(path, text)
    sha = remote.commit(message)
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    assert daemon.request("POST", github(body), body) == 202
    return sha


def test_a_push_reconciles_the_environments_whose_inputs_changed_and_moves_the_others_without_one(
        remote: GitRemote, daemon: Daemon, tmp_path: Path) -> None:
    state = tmp_path / "state"
    stored = lambda name, obj: json.loads(  # noqa: E731
        (state / "local" / "objects" / name / f"ConfigMap.default.{obj}.json").read_text())["manifest"]["data"]
    on = lambda sha: {s["environment"] for s in cli("status", "--state-dir", str(state))  # noqa: E731
                      if s["revision"] == sha and s["sync_status"] == "Synced"}
    steps = [
        ("one environment's file", {"environments/team-05/settings.yaml": settings("team-05", "2")}, {"team-05"}),
        ("the base two environments read", {"bases/shared/shared.yaml": "apiVersion: v1\nkind: ConfigMap\n"
                                            "metadata: {name: shared}\ndata: {value: '2'}\n"}, set(BASED)),
        ("a file no environment reads", {"NOTES.md": "release notes\n"}, set()),
    ]
    for what, files, changed in steps:
        before = reconciles(daemon)
        sha = push(remote, daemon, what, files)
        daemon.wait_for(f"every environment on the revision that changes {what}",
                        lambda sha=sha: on(sha) == set(NAMES), timeout=30)
        after = reconciles(daemon)
        assert {n for n in NAMES if after[n] != before[n]} == changed, what
        assert all(after[n] == before[n] + 1 for n in changed), what
        ledger = Ledger(state, readonly=True)
        for name in NAMES:
            revision, _, _, result, summary, _ = ledger.history(name, 1)[0]
            assert (revision, result) == (sha, "success"), (what, name)
            assert (summary == ADVANCED) == (name not in changed), (what, name, summary)
    assert cli("history", "--environment", "team-09", "--state-dir", str(state))[0]["summary"] == ADVANCED
    assert stored("team-05", "settings")["value"] == "2" and stored("team-06", "settings")["value"] == "1"
    assert {stored(n, "shared")["value"] for n in BASED} == {"2"}
    assert daemon.metric("ray_gitops_environment_info", environment="team-09", target="local", revision=sha[:12],
                         sync_status="Synced", health_status="Healthy") == 1
