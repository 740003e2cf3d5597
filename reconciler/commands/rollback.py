"""Intervening without editing YAML: `rollback` (a `git revert` of the commits that changed one
environment, or one commit restoring its directory, in a local work tree) and `suspend`/`resume`
(a ledger flag).

Rollback: the commits are made in a temporary detached worktree and the branch is fast-forwarded
to them only if every one applied, so a conflict leaves the branch untouched. Never resets, amends
or force-pushes: rollback is new commits, pushed only when asked. Undoing a rollback (which would
re-apply what it rolled back) is refused unless asked for.
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import git

from ..errors import RayGitopsError
from ..pipeline.ledger import Ledger
from ..pipeline.render import ROOT
from ..pipeline.verify import descends

RESTORE_TRAILER = "Ray-Gitops-Restore"  # on a `--restore` commit: the full sha its directory was restored to
REVERTS = re.compile(r"^This reverts commit ([0-9a-f]{40})\.?$", re.MULTILINE)  # what `git revert` writes


class RollbackError(RayGitopsError):
    """Refused or failed; the message says why and what to do. `conflicts`: files a revert conflicted on."""

    def __init__(self, message: str, conflicts: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.conflicts = conflicts


@dataclass(frozen=True)
class RollbackOptions:
    """How to roll back. `to`: the revision to go back to (default: see `default_target`);
    `restore`: one commit restoring the directory instead of one revert per commit; `all_paths`:
    also revert what those commits changed elsewhere; `reapply`: allow undoing a rollback."""

    to: str | None = None
    branch: str = "main"
    last_applied: str | None = None
    all_paths: bool = False
    restore: bool = False
    reapply: bool = False
    push: bool = False
    remote: str = "origin"


@dataclass(frozen=True)
class Rollback:
    """What was done: the revision rolled back to, the commits undone (newest first, (sha, subject)),
    old and new head, the diff."""

    base: str
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
        diffs = [*repo.index.diff(None), *repo.index.diff("HEAD")]
        changed = sorted({name for d in diffs if (name := d.a_path or d.b_path)} | set(repo.untracked_files))
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


def commits_to_revert(repo: git.Repo, environment: str, to: str, all_paths: bool,
                      allow_merges: bool = False) -> list[git.Commit]:
    """Commits after `to` that changed the environment, newest first; refuses merges unless
    `allow_merges`, and commits that also changed other paths unless `all_paths` (their revert would
    roll those back too)."""
    try:
        base = repo.commit(to).hexsha
    except (git.BadName, ValueError):
        raise RollbackError(f"--to {to}: no such revision in this clone") from None
    if repo.git.merge_base(base, "HEAD").strip() != base:
        raise RollbackError(f"--to {to}: not an ancestor of the branch head")
    shas = repo.git.log("--format=%H", f"{base}..HEAD", "--", env_path(environment)).split()
    commits = [repo.commit(sha) for sha in shas]
    merges = [c.hexsha[:12] for c in commits if len(c.parents) > 1]
    if merges and not allow_merges:
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
                                f"reverting them would roll those back too (pass --all-paths to accept, --restore "
                                f"to restore only the environment's directory, or revert by hand)")
    return commits


def undone_by(repo: git.Repo, commit: git.Commit, environment: str) -> list[git.Commit]:
    """The commits that `commit` rolled back (empty if it is no rollback): the one a `git revert`
    names, or every commit of the environment a `rollback --restore` went back over."""
    trailers = repo.git.log("-1", f"--format=%(trailers:key={RESTORE_TRAILER},valueonly)", commit.hexsha).split()
    if trailers:
        if not _known(repo, trailers[0]):
            return []
        shas = repo.git.log("--format=%H", f"{trailers[0]}..{commit.hexsha}~1", "--", env_path(environment)).split()
        return [repo.commit(sha) for sha in shas]
    return [repo.commit(sha) for sha in REVERTS.findall(_text(commit.message)) if _known(repo, sha)]


def refuse_reapplying(repo: git.Repo, environment: str, base: str, commits: list[git.Commit]) -> None:
    """RollbackError if undoing `commits` (those after `base`) would re-apply a change a rollback among
    them took back: one made at or before `base`, so not undone again by this rollback."""
    for commit in commits:
        again = [c for c in undone_by(repo, commit, environment) if descends(repo, c.hexsha, base)]
        if again:
            named = ", ".join(f"{c.hexsha[:12]} ({_text(c.summary)})" for c in again[:5])
            raise RollbackError(f"this would undo {commit.hexsha[:12]} ({_text(commit.summary)}), which is itself a "
                                f"rollback: undoing it re-applies {named}; pass --reapply if that is what you want, or "
                                f"--to an earlier revision to roll back further")


def rollback(path: Path, environment: str, options: RollbackOptions = RollbackOptions()) -> Rollback:
    """Undo every commit since `options.to` that changed `environments/<environment>/`: a revert of
    each, newest first, or with `restore` one commit restoring the directory."""
    repo = open_work_tree(path, options.branch)
    to = options.to or default_target(repo, environment, options.last_applied)
    commits = commits_to_revert(repo, environment, to, options.all_paths or options.restore,
                                allow_merges=options.restore)
    base = repo.commit(to).hexsha
    if not options.reapply:
        refuse_reapplying(repo, environment, base, commits)
    old = repo.head.commit.hexsha
    if not commits:
        return Rollback(base, [], old, old)
    new = _commit_aside(repo, lambda aside: _restore(aside, environment, base, commits) if options.restore
                        else _revert(aside, commits))
    if new == old:
        return Rollback(base, [], old, old)
    repo.git.merge("--ff-only", new)
    diff = repo.git.diff(old, new) if options.all_paths else repo.git.diff(old, new, "--", env_path(environment))
    if options.push:
        try:
            repo.git.push(options.remote, f"HEAD:refs/heads/{options.branch}")
        except git.GitCommandError as exc:
            raise RollbackError(f"the rollback commit(s) are on local {options.branch} but the push was refused: "
                                f"{exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else exc}; "
                                f"git pull --rebase, check, then git push") from None
    return Rollback(base, [(c.hexsha, _text(c.summary)) for c in commits], old, new, diff, options.push)


def _text(message: str | bytes) -> str:
    """A commit message or summary: gitpython decodes it (errors replaced); bytes only for an unknown encoding."""
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


def _known(repo: git.Repo, sha: str) -> bool:
    try:
        repo.commit(sha)
    except (git.BadName, ValueError):
        return False
    return True


def _commit_aside(repo: git.Repo, make: Callable[[git.Repo], None]) -> str:
    """Run `make` in a temporary detached worktree at HEAD; its new head. The worktree is removed
    whatever happens, so an error leaves nothing of the user's branch changed."""
    scratch = Path(tempfile.mkdtemp(prefix="ray-gitops-rollback-"))
    tree = scratch / "tree"
    repo.git.worktree("add", "--detach", str(tree), "HEAD")
    try:
        aside = git.Repo(tree)
        make(aside)
        return aside.head.commit.hexsha
    finally:
        repo.git.worktree("remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)


def _revert(aside: git.Repo, commits: list[git.Commit]) -> None:
    """`git revert` each commit, newest first; RollbackError with the conflicting files (the revert is
    aborted)."""
    for commit in commits:
        try:
            aside.git.revert("--no-edit", commit.hexsha)
        except git.GitCommandError:
            conflicts = tuple(aside.git.diff("--name-only", "--diff-filter=U").split())
            aside.git.revert("--abort")
            raise RollbackError(f"reverting {commit.hexsha[:12]} ({_text(commit.summary)}) conflicts with later "
                                f"changes in {', '.join(conflicts) or 'the work tree'}; nothing was changed "
                                f"(revert by hand, or choose a later --to, or --restore)", conflicts) from None


def _restore(aside: git.Repo, environment: str, base: str, commits: list[git.Commit]) -> None:
    """One commit making `environments/<environment>/` what it was at `base` (no commit if it already is)."""
    path = env_path(environment)
    aside.git.rm("-r", "-q", "--ignore-unmatch", "--", path)
    if aside.git.ls_tree("--name-only", base, "--", path).strip():
        aside.git.checkout(base, "--", path)
    if not aside.git.diff("--cached", "--name-only", "HEAD").strip():
        return
    listed = "\n".join(f"  {c.hexsha[:12]} {_text(c.summary)}" for c in commits)
    subject = _text(aside.commit(base).summary)
    aside.git.commit("-q", "-m", f"Restore {path} to {base[:12]} ({subject})",
                     "-m", f"Undoes, in one commit:\n{listed}", "--trailer", f"{RESTORE_TRAILER}: {base}")


def cmd_rollback(args: argparse.Namespace) -> int:
    last = Ledger(args.state_dir, readonly=True).load(args.environment).last_applied if args.state_dir else None
    options = RollbackOptions(args.to, args.branch, last, args.all_paths, args.restore, args.reapply, args.push)
    done = rollback(Path(args.repo), args.environment, options)
    path = env_path(args.environment)
    if not done.reverted:
        print(f"nothing to roll back: {path} is as it was at {done.base[:12]}")
        return 0
    if args.restore:
        print(f"restored {path} to {done.base[:12]} in one commit, undoing:")
    for sha, subject in done.reverted:
        print(f"  {sha[:12]} {subject}" if args.restore else f"reverted {sha[:12]} {subject}")
    print(done.diff.rstrip("\n") or f"(no net change under {'the repository' if args.all_paths else path})")
    where = (f"pushed to origin/{args.branch}" if done.pushed
             else f"not pushed (git push origin {args.branch} or --push)")
    made = "1 restore commit" if args.restore else f"{len(done.reverted)} revert commit(s)"
    print(f"{made} {done.old_head[:12]}..{done.new_head[:12]} on {args.branch}; {where}")
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
