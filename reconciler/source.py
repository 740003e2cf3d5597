"""Fetch stage: clone once, then fetch; expose a revision as a read-only file tree.

Called by the daemon and the CLI. Content is read from Git objects of one commit (never from a
working tree that a later fetch could change); `materialize` exports a sub-tree when a job needs
real files (a runtime-env `working_dir`). Credentials in URLs never reach logs or errors.
"""
from __future__ import annotations

import io
import re
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Protocol

import git

from .errors import TemporaryError


class FileTree(Protocol):
    """Read-only view of a repository's files (a Git commit or a directory on disk)."""

    def files(self, under: str) -> Iterator[str]: ...
    def read(self, path: str) -> bytes: ...
    def exists(self, path: str) -> bool: ...


class DirectoryTree:
    """A plain directory on disk (used by `ray-gitops validate PATH`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self, under: str) -> Iterator[str]:
        base = self.root / under
        for path in sorted(base.rglob("*")):
            if path.is_file() and ".git" not in path.relative_to(self.root).parts:
                yield path.relative_to(self.root).as_posix()

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def exists(self, path: str) -> bool:
        return (self.root / path).exists()


class CommitTree:
    """The files of one Git commit, read from the object database."""

    def __init__(self, commit: git.Commit) -> None:
        self.commit = commit

    def _entry(self, path: str) -> git.objects.base.Object | None:
        try:
            return self.commit.tree / path if path.strip("/") else self.commit.tree
        except KeyError:
            return None

    def files(self, under: str) -> Iterator[str]:
        tree = self._entry(under)
        if not isinstance(tree, git.Tree):
            return
        for item in sorted(tree.traverse(), key=lambda o: o.path):
            if isinstance(item, git.Blob):
                yield item.path

    def read(self, path: str) -> bytes:
        blob = self._entry(path)
        if not isinstance(blob, git.Blob):
            raise FileNotFoundError(path)
        return blob.data_stream.read()

    def exists(self, path: str) -> bool:
        return self._entry(path) is not None


@dataclass(frozen=True)
class Revision:
    """A fetched commit: SHA, commit time (Unix seconds) and its files."""

    sha: str
    commit_time: float
    tree: CommitTree

    @property
    def short(self) -> str:
        return self.sha[:12]


def redact(url: str) -> str:
    """Hide user:password or tokens embedded in a repository URL."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", url)


GitObserver = Callable[[str, str, float], None]  # (request_type, result, seconds)


class GitSource:
    """A repository mirrored under `cache_dir`, fetched on demand; thread-safe."""

    def __init__(self, url: str, branch: str, cache_dir: Path, observer: GitObserver | None = None) -> None:
        self.url = str(Path(url).resolve()) if Path(url).exists() else url
        self.branch = branch
        self.cache_dir = cache_dir
        self._observe = observer or (lambda *_: None)
        self._lock = threading.Lock()
        self._repo: git.Repo | None = None
        self._current: Revision | None = None

    def _open(self) -> git.Repo:
        if self._repo is None:
            if (self.cache_dir / "HEAD").exists():
                self._repo = git.Repo(self.cache_dir)
                self._repo.remotes.origin.set_url(self.url)
            else:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.init(self.cache_dir, bare=True)
                self._repo.create_remote("origin", self.url)
        return self._repo

    def fetch(self) -> Revision:
        """Fetch the branch; return its head. On failure keep and return the last good revision."""
        with self._lock:
            started = time.monotonic()
            try:
                repo = self._open()
                refspec = f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
                repo.remotes.origin.fetch(refspec, depth=None)
                commit = repo.commit(f"refs/remotes/origin/{self.branch}")
            except (git.GitCommandError, git.BadName, ValueError, OSError) as exc:
                self._observe("fetch", "error", time.monotonic() - started)
                if self._current is not None:
                    return self._current
                message = redact(str(exc)).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise TemporaryError(f"git fetch {redact(self.url)} branch {self.branch}: {redact(message)}") from None
            self._observe("fetch", "success", time.monotonic() - started)
            if self._current is None or self._current.sha != commit.hexsha:
                self._current = Revision(commit.hexsha, float(commit.committed_date), CommitTree(commit))
            return self._current

    def materialize(self, revision: Revision, path: str, into: Path) -> Path:
        """Export `path` of `revision` under `into/<sha>/` once; return the exported directory."""
        target = into / revision.sha
        out = target / path
        if out.exists():
            return out
        with self._lock:
            data = self._open().git.archive(revision.sha, "--format=tar", path.rstrip("/") + "/",
                                            stdout_as_string=False)
        partial = into / f".{revision.sha}.partial"
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(partial, filter="data")
        (target / PurePosixPath(path).parent).mkdir(parents=True, exist_ok=True)
        (partial / path).rename(out)
        shutil.rmtree(partial, ignore_errors=True)
        return out
