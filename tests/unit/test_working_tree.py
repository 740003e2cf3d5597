"""`render`, `diff` and `plan` on a working tree (`--path`, uncommitted changes included) and on an environment
that does not exist (a usage error, exit 2), through the CLI on real Git repositories."""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
import yaml

from reconciler.commands.cli import main
from tests.conftest import GitRemote, state_files

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
SETTINGS = "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{mode: {mode}}}\n"


@pytest.fixture
def committed(remote: GitRemote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GitRemote:
    """Environment e2e committed with mode `committed`, its render cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    remote.write("environments/e2e/environment.yaml", (TESTDATA / "environment-local.yaml").read_text())
    remote.write("environments/e2e/settings.yaml", SETTINGS.format(mode="committed"))
    remote.commit("settings")
    return remote


def status(remote: GitRemote) -> str:
    return remote.repo.git.status("--porcelain", "--untracked-files=all")


def test_render_path_reads_uncommitted_changes_and_writes_nothing(committed: GitRemote, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    committed.write("environments/e2e/settings.yaml", SETTINGS.format(mode="edited"))
    committed.write("environments/e2e/extra.yaml", SETTINGS.format(mode="new").replace("settings", "extra"))
    before = status(committed)

    assert main(["render", "--path", str(committed.work_path), "--environment", "e2e"]) == 0
    from_disk = [d["data"]["mode"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert main(["render", "--path", str(committed.work_path / "environments" / "e2e"), "--environment", "e2e"]) == 0
    from_directory = [d["data"]["mode"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert not (tmp_path / "cache").exists()  # no fetch, so no Git cache
    assert main(["render", "--repo", committed.url, "--environment", "e2e"]) == 0
    from_branch = [d["data"]["mode"] for d in yaml.safe_load_all(capsys.readouterr().out)]

    assert from_disk == from_directory == ["new", "edited"] and from_branch == ["committed"]
    assert status(committed) == before and committed.repo.head.commit.message == "settings"


def test_diff_and_plan_path_compare_the_working_tree_with_the_target(committed: GitRemote, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    committed.write("environments/e2e/settings.yaml", SETTINGS.format(mode="edited"))
    state = tmp_path / "state"
    assert main(["run", "--once", "--repo", committed.url, "--state-dir", str(state)]) == 0
    ledger = state_files(state)
    gc.collect()  # run --once closed its ledger: nothing is left for the collector to checkpoint while we look
    assert state_files(state) == ledger
    capsys.readouterr()

    assert main(["diff", "--path", str(committed.work_path), "--environment", "e2e", "--state-dir", str(state)]) == 1
    diff = capsys.readouterr().out
    assert main(["plan", "--path", str(committed.work_path), "--environment", "e2e", "--state-dir", str(state),
                 "-o", "json"]) == 1
    plan = yaml.safe_load(capsys.readouterr().out)

    assert "  update ConfigMap/default/settings" in diff and "-  mode: committed\n+  mode: edited" in diff
    assert diff.rstrip().endswith("1 change(s) for environment e2e at the working tree")
    assert [(i["action"], i["object"]) for i in plan["items"]] == [("update", "ConfigMap/default/settings")]
    assert plan["revision"] == ""
    assert state_files(state) == ledger  # nothing written
    assert main(["diff", "--repo", committed.url, "--environment", "e2e", "--state-dir", str(state)]) == 0


@pytest.mark.parametrize("verb", ["render", "diff", "plan"])
@pytest.mark.parametrize("where", ["repo", "path"])
def test_an_unknown_environment_is_a_usage_error(committed: GitRemote, tmp_path: Path, verb: str, where: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = ["--repo", committed.url] if where == "repo" else ["--path", str(committed.work_path)]

    code = main([verb, *source, "--environment", "nosuch", "--state-dir", str(tmp_path / "state")])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"ray-gitops {verb}: --environment nosuch: no such environment in ")
    assert err.rstrip().endswith("(environments: e2e)")


def test_an_invalid_environment_still_exits_1_from_render(committed: GitRemote,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    committed.write("environments/e2e/bad.yaml", "kind: RayCluster\n")

    assert main(["render", "--path", str(committed.work_path), "--environment", "e2e"]) == 1
    assert "environments/e2e/bad.yaml#0" in capsys.readouterr().err


def test_path_and_repo_together_are_refused(committed: GitRemote, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--repo", committed.url, "--path", str(committed.work_path), "--environment", "e2e"]) == 2
    assert "--path and --repo: give one" in capsys.readouterr().err
