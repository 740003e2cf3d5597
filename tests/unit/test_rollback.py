"""`ray-gitops rollback` on real repositories: revert commits of one environment, never rewrite history."""
from __future__ import annotations

import pytest

from reconciler.commands.cli import main
from reconciler.pipeline.ledger import Applied, Ledger
from tests.conftest import GitRemote


def remote_head(remote: GitRemote) -> str:
    return remote.repo.git.ls_remote(str(remote.bare_path), "refs/heads/main").split()[0]


@pytest.fixture
def history(remote: GitRemote) -> dict[str, str]:
    """a: v1 -> v2 -> v3 (two commits after the first), b: one change in between."""
    shas = {}
    remote.write("environments/a/values.yaml", "v1\n")
    remote.write("environments/b/values.yaml", "v1\n")
    shas["start"] = remote.commit("start")
    remote.write("environments/a/values.yaml", "v2\n")
    shas["a2"] = remote.commit("a: v2")
    remote.write("environments/b/values.yaml", "v2\n")
    shas["b2"] = remote.commit("b: v2")
    remote.write("environments/a/values.yaml", "v3\n")
    shas["a3"] = remote.commit("a: v3")
    return shas


def run(remote: GitRemote, *extra: str) -> int:
    return main(["rollback", "--repo", str(remote.work_path), "--environment", "a", *extra])


def test_rollback_reverts_only_the_environments_commits_newest_first_and_does_not_push(
        remote: GitRemote, history: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(remote, "--to", history["start"]) == 0
    out = capsys.readouterr().out

    log = remote.repo.git.log("--format=%s", f"{history['a3']}..HEAD").splitlines()
    assert log == ['Revert "a: v2"', 'Revert "a: v3"']  # newest commit reverted first
    assert (remote.work_path / "environments/a/values.yaml").read_text() == "v1\n"
    assert (remote.work_path / "environments/b/values.yaml").read_text() == "v2\n"
    assert f"reverted {history['a3'][:12]} a: v3" in out and "-v3\n+v1" in out
    assert "environments/b" not in out and "not pushed" in out
    assert remote_head(remote) == history["a3"]
    assert remote.repo.git.merge_base("--is-ancestor", history["a3"], "HEAD") == ""  # history kept


def test_rollback_pushes_only_with_push(remote: GitRemote, history: dict[str, str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(remote, "--push") == 0  # default: the parent of a's newest commit
    assert remote_head(remote) == remote.repo.head.commit.hexsha
    assert remote.repo.head.commit.summary == 'Revert "a: v3"'
    assert (remote.work_path / "environments/a/values.yaml").read_text() == "v2\n"
    assert "pushed to origin/main" in capsys.readouterr().out


def test_rollback_defaults_to_before_the_last_applied_revision(remote: GitRemote, history: dict[str, str],
                                                               tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(tmp_path).commit("a", applied=Applied(history["a2"], 0.0, "success", "applied"))

    assert run(remote, "--state-dir", str(tmp_path)) == 0
    reverted = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("reverted")]
    assert reverted == [history["a3"][:12], history["a2"][:12]]


def test_rollback_refuses_a_dirty_tree_and_another_branch(remote: GitRemote, history: dict[str, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/a/values.yaml", "edited by hand\n")
    assert run(remote) == 2
    assert "uncommitted changes (environments/a/values.yaml)" in capsys.readouterr().err
    remote.repo.git.checkout("--", ".")

    remote.repo.git.checkout("-b", "topic")
    assert run(remote) == 2
    assert "on branch topic, not main" in capsys.readouterr().err
    assert remote.repo.git.log("--format=%H", "-1", "main") == history["a3"]


def test_rollback_refuses_a_commit_shared_with_another_environment_unless_all_paths(
        remote: GitRemote, history: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/a/values.yaml", "v4\n")
    remote.write("environments/b/values.yaml", "v4\n")
    both = remote.commit("a and b: v4")

    assert run(remote, "--to", history["a3"]) == 2
    err = capsys.readouterr().err
    assert f"{both[:12]} (environments/b/values.yaml)" in err and "--all-paths" in err
    assert remote.repo.head.commit.hexsha == both

    assert run(remote, "--to", history["a3"], "--all-paths") == 0
    assert (remote.work_path / "environments/b/values.yaml").read_text() == "v2\n"
    out = capsys.readouterr().out  # the whole diff, not only the environment's own
    assert "environments/a/values.yaml" in out and "+++ b/environments/b/values.yaml" in out and "-v4\n+v2" in out


def test_rollback_aborts_cleanly_on_conflict(remote: GitRemote, history: dict[str, str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/a/values.yaml", "v4\n")
    remote.write("environments/b/values.yaml", "v4\n")
    remote.commit("a and b: v4")
    remote.write("environments/b/values.yaml", "v5\n")  # b moved on: reverting the shared commit conflicts
    later = remote.commit("b: v5")

    assert run(remote, "--to", history["a3"], "--all-paths") == 2
    err = capsys.readouterr().err
    assert "conflicts with later changes in environments/b/values.yaml; nothing was changed" in err
    assert remote.repo.head.commit.hexsha == later and not remote.repo.is_dirty(untracked_files=True)
    assert not (remote.work_path / ".git" / "REVERT_HEAD").exists()
    assert len(remote.repo.git.worktree("list").splitlines()) == 1  # the scratch worktree is gone


def test_rollback_again_after_its_revert_was_applied_is_refused_unless_reapply(
        remote: GitRemote, history: dict[str, str], tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(remote, "--push") == 0
    revert = remote.repo.head.commit.hexsha
    Ledger(tmp_path).commit("a", applied=Applied(revert, 0.0, "success", "applied"))  # the daemon applied it
    capsys.readouterr()

    assert run(remote, "--state-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert (f'would undo {revert[:12]} (Revert "a: v3"), which is itself a rollback: undoing it re-applies '
            f'{history["a3"][:12]} (a: v3); pass --reapply') in err
    assert remote.repo.head.commit.hexsha == revert

    assert run(remote, "--state-dir", str(tmp_path), "--reapply") == 0
    assert (remote.work_path / "environments/a/values.yaml").read_text() == "v3\n"


def test_rollback_past_a_rollback_and_what_it_undid_is_not_refused(remote: GitRemote, history: dict[str, str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    remote.revert(history["a3"])  # a hand-made `git revert` counts as a rollback too

    assert run(remote, "--to", history["a3"]) == 2  # undoing the revert alone would bring a3 back
    assert "which is itself a rollback" in capsys.readouterr().err
    assert run(remote, "--to", history["start"]) == 0  # a3 is undone again too: nothing comes back
    assert (remote.work_path / "environments/a/values.yaml").read_text() == "v1\n"


def test_rollback_restore_makes_one_commit_restoring_the_directory(remote: GitRemote, history: dict[str, str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    remote.write("environments/a/extra.yaml", "added\n")
    remote.write("environments/b/values.yaml", "v4\n")
    remote.commit("a and b: extra")  # touches b too: --restore leaves b alone instead of refusing
    before = remote.repo.head.commit.hexsha

    assert run(remote, "--to", history["start"], "--restore") == 0
    out = capsys.readouterr().out
    head = remote.repo.head.commit
    assert head.parents[0].hexsha == before  # exactly one new commit
    assert head.summary == f"Restore environments/a/ to {history['start'][:12]} (start)"
    assert remote.repo.git.ls_tree("-r", "--name-only", "HEAD", "environments/a").split() == \
        ["environments/a/values.yaml"]
    assert (remote.work_path / "environments/a/values.yaml").read_text() == "v1\n"
    assert (remote.work_path / "environments/b/values.yaml").read_text() == "v4\n"
    assert f"restored environments/a/ to {history['start'][:12]} in one commit" in out
    assert f"  {history['a2'][:12]} a: v2" in out and "1 restore commit" in out

    assert run(remote) == 2  # the newest commit of a is the restore: undoing it is refused
    assert f"would undo {head.hexsha[:12]} (Restore environments/a/" in capsys.readouterr().err
    assert run(remote, "--to", history["start"], "--restore") == 0
    assert "nothing to roll back: environments/a/ is as it was at" in capsys.readouterr().out
    assert remote.repo.head.commit == head
