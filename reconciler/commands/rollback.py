"""Intervening without editing YAML: `rollback` (a `git revert` of the commits that changed one
environment, in a local work tree) and `suspend`/`resume` (a ledger flag).

Rollback: The reverts are made in a temporary detached worktree and the branch
is fast-forwarded to them only if every one applied, so a conflict leaves the branch untouched.
Never resets, amends or force-pushes: rollback is new commits, pushed only when asked.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import git

from ..errors import RayGitopsError
from ..pipeline.ledger import Ledger
from ..pipeline.render import ROOT


class RollbackError(RayGitopsError):
    """Refused or failed; the message says why and what to do. `conflicts`: files a revert conflicted on."""

    def __init__(self, message: str, conflicts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.conflicts = conflicts


@dataclass(frozen=True)
class Rollback:
    """What was done: the commits reverted (newest first, (sha, subject)), old and new head, the diff."""

    reverted: list[tuple[str, str]] = field(default_factory=list)
    old_head: str = ""
    new_head: str = ""
    diff: str = ""
    pushed: bool = False


def open_work_tree(path: Path, branch: str) -> git.Repo:
    """The repository at `path`, refused unless it is a clean work tree on `branch`."""
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RollbackError(f"{path}: not a Git work tree (clone the GitOps repository, point --repo at it)") from None
    if repo.bare:
        raise RollbackError(f"{path}: a bare repository; rollback needs a work tree (git clone it)")
    if repo.head.is_detached or repo.active_branch.name != branch:
        current = "a detached HEAD" if repo.head.is_detached else f"branch {repo.active_branch.name}"
        raise RollbackError(f"{path}: on {current}, not {branch} (git switch {branch}, or pass --branch)")
    if repo.is_dirty(untracked_files=True):
        changed = sorted({d.a_path for d in repo.index.diff(None)} | {d.a_path for d in repo.index.diff("HEAD")}
                         | set(repo.untracked_files))
        raise RollbackError(f"{path}: uncommitted changes ({', '.join(changed[:10])}); commit or stash them first")
    return repo


def default_target(repo: git.Repo, environment: str, last_applied: str | None) -> str:
    """Where to roll back to when --to is not given: the parent of the last applied revision (the
    ledger's, when known), else the parent of the newest commit that changed the environment."""
    if last_applied:
        try:
            return repo.commit(last_applied).hexsha + "~1"
        except (git.BadName, ValueError):
            raise RollbackError(f"the last applied revision {last_applied[:12]} is not in this clone "
                                f"(git pull first)") from None
    newest = repo.git.log("-1", "--format=%H", "HEAD", "--", env_path(environment)).strip()
    if not newest:
        raise RollbackError(f"no commit on this branch changed {env_path(environment)}")
    return newest + "~1"


def env_path(environment: str) -> str:
    return f"{ROOT}/{environment}/"


def commits_to_revert(repo: git.Repo, environment: str, to: str, all_paths: bool) -> list[git.Commit]:
    """Commits after `to` that changed the environment, newest first; refuses merges, and commits that
    also changed other paths unless `all_paths` (their revert would roll those back too)."""
    try:
        base = repo.commit(to).hexsha
    except (git.BadName, ValueError):
        raise RollbackError(f"--to {to}: no such revision in this clone") from None
    if repo.git.merge_base(base, "HEAD").strip() != base:
        raise RollbackError(f"--to {to}: not an ancestor of the branch head")
    shas = repo.git.log("--format=%H", f"{base}..HEAD", "--", env_path(environment)).split()
    commits = [repo.commit(sha) for sha in shas]
    merges = [c.hexsha[:12] for c in commits if len(c.parents) > 1]
    if merges:
        raise RollbackError(f"merge commit(s) {', '.join(merges)} changed {env_path(environment)}: revert them by "
                            f"hand (git revert -m 1 <commit>) or choose an earlier --to")
    if not all_paths:
        shared = []
        for commit in commits:
            touched = repo.git.diff_tree("--no-commit-id", "--name-only", "-r", "--root", commit.hexsha).splitlines()
            others = [p for p in touched if not p.startswith(env_path(environment))]
            if others:
                shared.append(f"{commit.hexsha[:12]} ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})")
        if shared:
            raise RollbackError(f"commit(s) also changed paths outside {env_path(environment)}: {'; '.join(shared)}; "
                                f"reverting them would roll those back too (pass --all-paths to accept, or revert "
                                f"by hand)")
    return commits


def rollback(path: Path, environment: str, to: str | None = None, branch: str = "main",
             last_applied: str | None = None, all_paths: bool = False, push: bool = False,
             remote: str = "origin") -> Rollback:
    """Revert, newest first, every commit since `to` that changed `environments/<environment>/`."""
    repo = open_work_tree(path, branch)
    to = to or default_target(repo, environment, last_applied)
    commits = commits_to_revert(repo, environment, to, all_paths)
    old = repo.head.commit.hexsha
    if not commits:
        return Rollback([], old, old)
    new = _revert_aside(repo, commits)
    repo.git.merge("--ff-only", new)
    diff = repo.git.diff(old, new, "--", env_path(environment))
    if push:
        try:
            repo.git.push(remote, f"HEAD:refs/heads/{branch}")
        except git.GitCommandError as exc:
            raise RollbackError(f"the revert commit(s) are on local {branch} but the push was refused: "
                                f"{exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc}; "
                                f"git pull --rebase, check, then git push") from None
    return Rollback([(c.hexsha, c.summary) for c in commits], old, new, diff, push)


def _revert_aside(repo: git.Repo, commits: list[git.Commit]) -> str:
    """Make the revert commits in a temporary detached worktree; the new head, or RollbackError with the
    conflicting files (the revert is aborted and nothing of the user's branch has changed)."""
    scratch = Path(tempfile.mkdtemp(prefix="ray-gitops-rollback-"))
    tree = scratch / "tree"
    repo.git.worktree("add", "--detach", str(tree), "HEAD")
    try:
        aside = git.Repo(tree)
        for commit in commits:
            try:
                aside.git.revert("--no-edit", commit.hexsha)
            except git.GitCommandError:
                conflicts = tuple(aside.git.diff("--name-only", "--diff-filter=U").split())
                aside.git.revert("--abort")
                raise RollbackError(f"reverting {commit.hexsha[:12]} ({commit.summary}) conflicts with later "
                                    f"changes in {', '.join(conflicts) or 'the work tree'}; nothing was changed "
                                    f"(revert by hand, or choose a later --to)", conflicts) from None
        return aside.head.commit.hexsha
    finally:
        repo.git.worktree("remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)


def cmd_rollback(args: argparse.Namespace) -> int:
    last = Ledger(args.state_dir, readonly=True).load(args.environment).last_applied if args.state_dir else None
    done = rollback(Path(args.repo), args.environment, args.to, args.branch, last, args.all_paths, args.push)
    if not done.reverted:
        print(f"nothing to roll back: no commit changed environments/{args.environment}/ since the chosen revision")
        return 0
    for sha, subject in done.reverted:
        print(f"reverted {sha[:12]} {subject}")
    print(done.diff.rstrip("\n") or f"(no net change under environments/{args.environment}/)")
    where = f"pushed to origin/{args.branch}" if done.pushed else f"not pushed (git push origin {args.branch} or --push)"
    print(f"{len(done.reverted)} revert commit(s) {done.old_head[:12]}..{done.new_head[:12]} on {args.branch}; "
          f"{where}")
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    """`suspend` and `resume`: the ledger flag the pipeline reads at every reconcile."""
    ledger = Ledger(args.state_dir)
    if args.command == "suspend":
        ledger.suspend(args.environment, args.reason or "")
        print(f"environment {args.environment}: suspended in {ledger.path}; from its next reconcile the daemon "
              f"reports Suspended and applies nothing (`ray-gitops resume` lifts it; `spec.suspend: true` in Git "
              f"is the GitOps way)")
    elif ledger.resume(args.environment):
        print(f"environment {args.environment}: resumed; its next reconcile applies Git again")
    else:
        print(f"environment {args.environment}: was not suspended in {ledger.path} (a `spec.suspend: true` "
              f"in Git is lifted only by a commit)")
    return 0
