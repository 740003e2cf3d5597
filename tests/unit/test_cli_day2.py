"""Day-2 commands through `main([...])`: history, plan, suspend/resume (real Git; in-memory target)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.commands.cli import main
from reconciler.pipeline.source import GitSource
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.memory import MemoryTarget, pipeline
from tests.unit.test_reconcile import cluster_yaml, env_yaml

TESTDATA = Path(__file__).parent.parent / "testdata"


@pytest.fixture
def stage(remote: GitRemote, tmp_path: Path):
    """The reconcile stage on environment `a` with a state dir the CLI reads too."""
    target, state = MemoryTarget(), tmp_path / "state"
    source = GitSource(remote.url, "main", tmp_path / "cache")
    reconciler = pipeline(source, state, target)
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    remote.write("environments/a/raycluster.yaml", cluster_yaml())
    return remote, source, reconciler, target, state


def test_history_lists_applied_revisions_newest_first(stage, capsys: pytest.CaptureFixture[str]) -> None:
    remote, source, reconciler, target, state = stage
    first = remote.commit("one worker")
    reconciler.reconcile("a", source.fetch())
    remote.write("environments/a/raycluster.yaml", cluster_yaml(replicas=2))
    second = remote.commit("two workers")
    reconciler.reconcile("a", source.fetch())

    assert main(["history", "--environment", "a", "--state-dir", str(state)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["REVISION", "COMMITTED", "APPLIED", "RESULT", "SIGNER", "SUMMARY"]
    assert [line.split()[0] for line in table[1:]] == [second[:12], first[:12]]
    assert "RayCluster/default/demo created" in table[2]
    assert main(["history", "--environment", "a", "--state-dir", str(state), "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["revision"], r["result"]) for r in rows] == [(second, "success"), (first, "success")]
    assert rows[0]["commit_time"] <= rows[0]["applied_at"]


def test_history_of_an_unknown_environment_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--environment", "nope", "--state-dir", str(tmp_path)]) == 0
    assert "no applied revisions recorded for environment nope" in capsys.readouterr().err


def test_plan_lists_actions_without_diff_bodies_and_exits_like_diff(remote: GitRemote, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/e2e/environment.yaml", (TESTDATA / "environment-local.yaml").read_text())
    remote.commit("an empty environment")
    args = ["plan", "--repo", remote.url, "--environment", "e2e", "--state-dir", str(tmp_path / "state")]
    assert main(args) == 0
    assert "0 change(s) for environment e2e" in capsys.readouterr().out

    cluster = (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1")
    remote.write("environments/e2e/raycluster.yaml", cluster)
    remote.commit("one cluster")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "  create RayCluster/default/demo: not on the target" in out and "+++" not in out
    assert "1 change(s) for environment e2e" in out

    remote.write("environments/e2e/bad.yaml", "kind: RayCluster\n")
    remote.commit("broken")
    assert main(args) == 2
    assert "environments/e2e/bad.yaml#0" in capsys.readouterr().err


def test_suspend_holds_new_commits_and_resume_applies_them_without_a_restart(
        stage, capsys: pytest.CaptureFixture[str]) -> None:
    remote, source, reconciler, target, state = stage
    remote.commit("one worker")
    assert reconciler.reconcile("a", source.fetch()).result == "success"
    calls = len(target.calls)

    assert main(["suspend", "--environment", "a", "--state-dir", str(state), "--reason", "INC-42"]) == 0
    assert "environment a: suspended" in capsys.readouterr().out
    remote.write("environments/a/raycluster.yaml", cluster_yaml(replicas=3))
    remote.commit("three workers")
    held = reconciler.reconcile("a", source.fetch())  # the same reconciler: no restart

    assert (held.result, held.sync_status) == ("noop", "Suspended") and len(target.calls) == calls
    assert main(["status", "--state-dir", str(state)]) == 0
    assert "suspended by `ray-gitops suspend`: INC-42" in capsys.readouterr().out

    assert main(["resume", "--environment", "a", "--state-dir", str(state)]) == 0
    assert "environment a: resumed" in capsys.readouterr().out
    resumed = reconciler.reconcile("a", source.fetch())

    assert (resumed.result, resumed.sync_status) == ("success", "Synced")
    assert target.calls[calls:] == [("update", "demo")]
    assert main(["resume", "--environment", "a", "--state-dir", str(state)]) == 0
    assert "was not suspended" in capsys.readouterr().out


def test_suspend_holds_even_an_environment_git_cannot_render(stage) -> None:
    remote, source, reconciler, target, state = stage
    remote.write("environments/a/broken.yaml", "kind: [unclosed")
    remote.commit("broken")
    reconciler.ledger.suspend("a")

    assert reconciler.reconcile("a", source.fetch()).sync_status == "Suspended" and target.calls == []


def test_each_applied_object_is_logged_at_info_as_it_happens(stage, caplog: pytest.LogCaptureFixture) -> None:
    remote, source, reconciler, target, state = stage
    remote.write("environments/a/two.yaml", cluster_yaml("two"))
    remote.commit("two clusters")
    with caplog.at_level("INFO", logger="reconciler.pipeline.reconcile"):
        reconciler.reconcile("a", source.fetch())
    applied = [r.getMessage() for r in caplog.records if " created (" in r.getMessage()]
    assert applied == ["environment a: RayCluster/default/demo created (not on the target)",
                       "environment a: RayCluster/default/two created (not on the target)"]


def test_plan_as_json_lists_each_change_with_its_field_paths(remote: GitRemote, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """On the real local target (a ConfigMap needs no Ray), as the daemon left it."""
    state = tmp_path / "state"
    source = GitSource(remote.url, "main", tmp_path / "cache")
    reconciler = pipeline(source, state, LocalTarget(state))
    remote.write("environments/a/environment.yaml", env_yaml("a"))
    settings = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast, size: '1'}\n"
    remote.write("environments/a/settings.yaml", settings)
    remote.commit("settings")
    assert reconciler.reconcile("a", source.fetch()).result == "success"
    remote.write("environments/a/settings.yaml", settings.replace("fast", "slow").replace(", size: '1'", ""))
    sha = remote.commit("slow, no size")
    args = ["--repo", remote.url, "--environment", "a", "--state-dir", str(state), "-o", "json"]

    assert main(["diff", *args]) == 1
    found = json.loads(capsys.readouterr().out)
    assert main(["plan", *args]) == 1
    planned = json.loads(capsys.readouterr().out)

    [item] = found["items"]
    assert (found["revision"], item["object"], item["action"]) == (sha, "ConfigMap/default/settings", "update")
    assert item["changes"] == ["data.mode", "data.size"]
    assert "-  mode: fast" in item["diff"] and "+  mode: slow" in item["diff"]
    assert "diff" not in planned["items"][0] and planned["items"][0]["changes"] == item["changes"]


def test_an_unexpected_error_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr("reconciler.pipeline.ledger.Ledger.states", broken)
    assert main(["status", "--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ray-gitops status: internal error: KeyError: 'oops'\n"
