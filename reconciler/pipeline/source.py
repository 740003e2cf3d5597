"""Fetch stage: clone once, then fetch; turn a revision into an immutable in-memory snapshot.

Thread ownership: `GitSource` owns the only gitpython `Repo` and touches it only under its lock,
from whichever thread calls `fetch`/`materialize` (the daemon's main loop, or a CLI command).
`fetch` reads everything a reconcile may read from the new commit (the whole file listing, and
the content of every YAML file) into a `Snapshot` in one pass, before any environment thread
sees it; environment threads then read only that plain, immutable data. Unusual tree entries
(symlinks, submodules, `..`, names that are not plain file names, oversized files) are recorded
as problems for render to report, never raised. Credentials in URLs never reach logs or errors.
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Protocol
from urllib.parse import unquote

import git

from ..errors import TemporaryError
from .verify import Verdict, Verifier, descends

log = logging.getLogger(__name__)
YAML_SUFFIXES = (".yaml", ".yml")
MAX_FILE_BYTES = 2 * 1024 * 1024  # one YAML file; larger ones are a problem, not read
MAX_DIRECTORY_BYTES = 16 * 1024 * 1024  # the YAML of one environment's directory (or one base's top directory)
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024  # all YAML of one revision together
_FILE_MODES = {"100644", "100755", "100664"}


class FileTree(Protocol):
    """Read-only view of a repository's files (a fetched revision or a directory on disk)."""

    def files(self, under: str) -> Iterator[str]: ...
    def read(self, path: str) -> bytes: ...
    def exists(self, path: str) -> bool: ...
    def problems(self, under: str) -> Iterator[tuple[str, str]]: ...


def name_problem(name: str) -> str | None:
    """Why one path component is not a plain file name (None when it is)."""
    if name in ("", ".", ".."):
        return f"entry name {name!r} is not allowed"
    if not name.isprintable() or "\\" in name:
        return f"entry name {ascii(name)} holds invisible, control or backslash characters"
    if name.casefold() == ".git":
        return "entry name .git is not allowed"
    return None


def shown(path: str) -> str:
    """`path` safe to print: invisible and control characters escaped (`\\u200c`)."""
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] for c in path)


def path_problem(path: str) -> str | None:
    for part in path.split("/"):
        problem = name_problem(part)
        if problem:
            return problem
    return None


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.strip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class Snapshot:
    """The files of one commit, read once: YAML contents, the names of all other files, and problems
    (path -> reason) for entries that cannot be used. Immutable and safe to share between threads."""

    contents: Mapping[str, bytes]  # YAML files within the size limits
    others: frozenset[str] = frozenset()  # other regular files (listed, not read)
    problem_map: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def _paths(self) -> tuple[str, ...]:
        return tuple(sorted((*self.contents, *self.others)))

    def files(self, under: str) -> Iterator[str]:
        """Sorted paths of the files at or below `under` (a lookup in the sorted paths: one environment's
        files cost as much whatever the number of environments)."""
        prefix, paths = under.strip("/"), self._paths
        if not prefix:
            yield from paths
            return
        if self.exists(prefix):
            yield prefix
        yield from paths[bisect.bisect_left(paths, prefix + "/"):bisect.bisect_left(paths, prefix + "0")]

    def read(self, path: str) -> bytes:
        try:
            return self.contents[path]
        except KeyError:
            raise FileNotFoundError(path) from None

    def exists(self, path: str) -> bool:
        return path in self.contents or path in self.others

    def problems(self, under: str) -> Iterator[tuple[str, str]]:
        yield from sorted((p, r) for p, r in self.problem_map.items() if _under(p, under))

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.contents.values())


Inputs = frozenset[tuple[str, str, str]]  # (what was asked: files|read|exists|problems, of what path, its answer)


class Reads:
    """A FileTree that notes what is asked of it: what one environment's reconcile read of a revision. Those
    `inputs()` replayed on a later revision tell whether anything the environment reads changed there
    (`unchanged`), whatever it names (its directory, a base, a patch file). Owned by one environment thread."""

    def __init__(self, tree: FileTree) -> None:
        self.tree = tree
        self._seen: dict[tuple[str, str], str] = {}

    def files(self, under: str) -> Iterator[str]:
        found = list(self.tree.files(under))
        self._seen["files", under] = _digest(found)
        yield from found

    def read(self, path: str) -> bytes:
        self._seen["read", path] = _answer("read", self.tree, path)
        return self.tree.read(path)

    def exists(self, path: str) -> bool:
        self._seen["exists", path] = _answer("exists", self.tree, path)
        return self.tree.exists(path)

    def problems(self, under: str) -> Iterator[tuple[str, str]]:
        found = list(self.tree.problems(under))
        self._seen["problems", under] = _digest(f"{p}\0{r}" for p, r in found)
        yield from found

    def inputs(self) -> Inputs:
        return frozenset((ask, path, answer) for (ask, path), answer in self._seen.items())


def _answer(ask: str, tree: FileTree, path: str) -> str:
    """A digest of what `tree` answers to `ask` about `path`."""
    if ask == "read":
        try:
            return hashlib.blake2b(tree.read(path), digest_size=16).hexdigest()
        except FileNotFoundError:
            return "-"
    if ask == "exists":
        return str(tree.exists(path))
    return _digest(tree.files(path) if ask == "files" else (f"{p}\0{r}" for p, r in tree.problems(path)))


def _digest(lines: Iterable[str]) -> str:
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()


def unchanged(inputs: Inputs, tree: FileTree) -> bool:
    """Whether `tree` answers as the one `inputs` were read from (see `Reads`)."""
    return all(_answer(ask, tree, path) == answer for ask, path, answer in inputs)


class DirectoryTree:
    """A plain directory on disk (used by `ray-gitops validate PATH`). Like Git, it never follows a
    symbolic link: one is a problem of its environment, as in a commit."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _walk(self, under: str) -> Iterator[tuple[str, str | None]]:
        """(path, problem or None) of every file below `under`, without following links."""
        base = self.root / under
        if base.is_symlink():
            yield under, "symbolic links are not followed"
            return
        for top, dirs, names in os.walk(base):
            rel = Path(top).relative_to(self.root).as_posix()
            prefix = "" if rel == "." else rel + "/"
            if rel != "." and ".git" in (*dirs, *names):  # a checked-out submodule (or a nested repository)
                yield rel, "submodules are not supported"
                dirs[:] = []
                continue
            for name in sorted(dirs):
                if os.path.islink(os.path.join(top, name)):
                    yield f"{prefix}{name}", "symbolic links are not followed"
            dirs[:] = sorted(d for d in dirs if d != ".git" and not os.path.islink(os.path.join(top, d)))
            for name in sorted(names):
                path, full = f"{prefix}{name}", os.path.join(top, name)
                mode = os.lstat(full).st_mode
                problem = (path_problem(path) or ("symbolic links are not followed" if stat.S_ISLNK(mode) else None)
                           or (None if stat.S_ISREG(mode) else "not a regular file")
                           or _size_problem(os.lstat(full).st_size, path))
                yield (path, problem) if problem is None else (shown(path), problem)

    def files(self, under: str) -> Iterator[str]:
        yield from sorted(p for p, problem in self._walk(under) if problem is None)

    def read(self, path: str) -> bytes:
        full = self.root / path
        if full.is_symlink() or path_problem(path):
            raise FileNotFoundError(path)
        return full.read_bytes()

    def exists(self, path: str) -> bool:
        full = self.root / path
        return full.is_file() and not full.is_symlink()

    def problems(self, under: str) -> Iterator[tuple[str, str]]:
        yield from sorted((p, r) for p, r in self._walk(under) if r is not None)


def _size_problem(size: int, path: str) -> str | None:
    if path.endswith(YAML_SUFFIXES) and size > MAX_FILE_BYTES:
        return f"file is {size} bytes, more than the limit of {MAX_FILE_BYTES}"
    return None


@dataclass(frozen=True)
class FetchFailure:
    """The source's fetches are failing: since when (Unix time) and the last reason."""

    since: float
    reason: str

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"fetch failing since {when}: {self.reason}"


@dataclass(frozen=True)
class SourceState:
    """What the source knew of its branch when it handed out a revision: its fetches failing (`failure`), a head
    that failed verification and is not applied (`unverified`: (sha, why)), the last verified head."""

    failure: FetchFailure | None = None
    unverified: tuple[str, str] | None = None
    verified: str = ""


@dataclass(frozen=True)
class Revision:
    """A fetched commit: SHA, commit time (Unix seconds), subject and author, its snapshot, and the source's
    state when `fetch` returned it (a reconcile reports from it, not from the source, which a later fetch moves)."""

    sha: str
    commit_time: float
    tree: FileTree  # a `Snapshot`; a `DirectoryTree` for the working tree of `render --path`
    subject: str = ""
    author: str = ""
    signer: str = ""  # fingerprint of the key that signed it, when signatures are verified
    state: SourceState = SourceState()

    @property
    def short(self) -> str:
        return self.sha[:12]


def split_credentials(url: str) -> tuple[str, str, str]:
    """(url without credentials, user, password) of `scheme://user:password@host/path`. Everything up to
    the last `@` after `://` is taken as credentials, so a raw `@`, `/` or `:` in a password never leaks
    (a path holding `@` is over-redacted, never under-). Percent-encoded credentials are decoded."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url, "", ""
    userinfo, _, host = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{host}", unquote(user), unquote(password)


def redact(text: str) -> str:
    """`text` (a URL, or a message holding URLs) with the credentials of every URL in it replaced by ***."""
    return re.sub(r"(\w+://)(\S*)@", r"\1***@", text)


GitObserver = Callable[[str, str, float], None]  # (request_type, result, seconds)
# git asks "Username for ...:" then "Password for ...:"; the answers come from the environment.
ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$RAY_GITOPS_GIT_USERNAME" ;;
  *) printf '%s\\n' "$RAY_GITOPS_GIT_PASSWORD" ;;
esac
"""


def budget_directory(path: str) -> str:
    """Whose share of the revision's YAML a file takes: its environment's (`environments/<env>`), else its top
    directory's (a base). One environment's directory can then fill only its own share, never the others'."""
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] == "environments" and len(parts) > 2 else parts[0]


def read_snapshot(repo: git.Repo, sha: str) -> Snapshot:
    """Read commit `sha` of `repo` into a Snapshot: one `git ls-tree`, then one `git cat-file` per YAML
    blob. Git itself lists the entries, so a crafted tree that gitpython cannot parse is still read."""
    listing = repo.git.ls_tree("-r", "-z", "-l", "--full-tree", sha, stdout_as_string=False)
    contents: dict[str, bytes] = {}
    others: set[str] = set()
    problems: dict[str, str] = {}
    total, per_directory = 0, collections.Counter[str]()
    for raw in listing.split(b"\0"):
        if not raw:
            continue
        meta, _, raw_path = raw.partition(b"\t")
        mode, kind, blob, size = meta.split()
        try:
            path = raw_path.decode("utf-8")
        except UnicodeDecodeError:
            problems[shown(raw_path.decode("utf-8", "backslashreplace"))] = "entry name is not valid UTF-8"
            continue
        mode_text = mode.decode()
        problem = (path_problem(path)
                   or ("duplicate entry" if path in contents or path in others else None)
                   or ("submodules are not supported" if kind == b"commit" else None)
                   or ("symbolic links are not followed" if mode_text == "120000" else None)
                   or (None if kind == b"blob" and mode_text in _FILE_MODES else f"unsupported entry mode {mode_text}")
                   or _size_problem(int(size), path))
        if problem is None and path.endswith(YAML_SUFFIXES):
            directory = budget_directory(path)
            if per_directory[directory] + int(size) > MAX_DIRECTORY_BYTES:
                problem = f"the YAML files of {directory}/ exceed {MAX_DIRECTORY_BYTES} bytes together; not read"
            elif total + int(size) > MAX_SNAPSHOT_BYTES:
                problem = f"the revision's YAML files exceed {MAX_SNAPSHOT_BYTES} bytes together; not read"
            else:
                contents[path] = repo.odb.stream(bytes.fromhex(blob.decode())).read()
                total += len(contents[path])
                per_directory[directory] += len(contents[path])
                continue
        if problem is None:
            others.add(path)
        else:
            problems[shown(path)] = problem
    return Snapshot(MappingProxyType(contents), frozenset(others), MappingProxyType(problems))


class VerifiedHeads(Protocol):
    """Where the last verified head of a (repository, branch) is kept across restarts (the daemon's ledger)."""

    def last_verified(self, url: str, branch: str) -> tuple[str, str] | None:
        """(revision, signer) of the last head that passed verification, if any."""

    def record_verified(self, url: str, branch: str, revision: str, signer: str) -> None: ...

    def recalled(self) -> list[str]:
        """Verified heads kept elsewhere (the targets' ledger copies), for a daemon whose ledger has none."""


def cache_key(url: str) -> str:
    """The directory name of a repository's cache: one per URL (without credentials), so a cache is never
    pointed at another repository."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def user_cache() -> Path:
    """Where the read-only commands (`plan`, `diff`, `render`) keep their Git caches: the user's cache
    directory, never a daemon's state dir."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ray-gitops" / "git"


class GitSource:
    """A repository mirrored under `root/<cache_key(url)>`, fetched on demand. Thread-safe (one lock around the
    Repo), and safe beside another process on the same cache (a file lock around each fetch)."""

    def __init__(self, url: str, branch: str, root: Path, observer: GitObserver | None = None,
                 verifier: Verifier | None = None, heads: VerifiedHeads | None = None) -> None:
        url = str(Path(url).resolve()) if Path(url).exists() else url
        self.url, user, password = split_credentials(url)  # only the clean URL reaches the cache's config
        self._credentials = {"RAY_GITOPS_GIT_USERNAME": user, "RAY_GITOPS_GIT_PASSWORD": password} if user else {}
        self.branch = branch
        self.root = root
        self.cache_dir = root / cache_key(self.url)
        self._heads = heads
        self._observe = observer or (lambda *_: None)
        self._lock = threading.Lock()
        self._repo: git.Repo | None = None
        self._current: Revision | None = None
        self._older: dict[str, Revision] = {}  # earlier revisions asked for (a gated environment's last applied)
        self.failure: FetchFailure | None = None  # set while fetches fail; the last good revision stays
        self.verifier = verifier
        self.unverified: tuple[str, str] | None = None  # (head, why) while the head fails verification
        self.verified = ""  # the last head that passed verification ("" without verification)

    def _open(self) -> git.Repo:
        """The cache repository. Made by two git commands (`init`, `remote add`), so a crash between them
        leaves it without `origin`: the next open adds it. Its `origin` is never changed: another URL has a
        cache of its own."""
        if self._repo is None:
            if (self.cache_dir / "HEAD").exists():
                repo = git.Repo(self.cache_dir)
            else:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.init(self.cache_dir, bare=True)
            if not any(remote.name == "origin" for remote in repo.remotes):
                repo.create_remote("origin", self.url)
            elif repo.remotes.origin.url != self.url:
                raise TemporaryError(f"Git cache {self.cache_dir} follows {redact(repo.remotes.origin.url)}, not "
                                     f"{redact(self.url)}; remove it")
            self._repo = repo
        return self._repo

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the cache's file lock (another process fetching into it waits)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{cache_key(self.url)}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def fetch(self) -> Revision:
        """Fetch the branch; return its head as a snapshot. On failure keep and return the last good
        revision (and set `failure`); with none yet, raise TemporaryError. Logs only state changes."""
        with self._lock, self._exclusive():
            started = time.monotonic()
            try:
                repo = self._open()
                refspec = f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
                with repo.git.custom_environment(**self._fetch_environment()):
                    repo.remotes.origin.fetch(refspec, depth=None)
                sha = repo.git.rev_parse("--verify", f"refs/remotes/origin/{self.branch}^{{commit}}").strip()
                if self._current is None or self._current.sha != sha:
                    self._advance(repo, sha)
                elif self.unverified is not None:  # the branch was put back on the applied (verified) head
                    log.info("git: the branch head is %s again, the last verified revision", self._current.short)
                    self.unverified = None
            except Exception as exc:  # git, the network, a corrupt cache, unreadable content: never fatal
                self._observe("fetch", "error", time.monotonic() - started)
                self._failed(exc)
                if self._current is not None:
                    return self._stated(self._current)
                raise TemporaryError(f"git fetch {redact(self.url)} branch {self.branch}: "
                                     f"{self.failure.reason if self.failure else ''}") from None
            self._observe("fetch", "success", time.monotonic() - started)
            if self.failure is not None:
                log.info("git fetch of %s branch %s works again (failing since %s)", redact(self.url), self.branch,
                         time.strftime("%H:%M:%S", time.localtime(self.failure.since)))
                self.failure = None
            if self._current is None:  # the first head failed verification: nothing to apply
                raise TemporaryError(f"revision {self.unverified[0][:12] if self.unverified else ''} is not applied: "
                                     f"{self.unverified[1] if self.unverified else 'unverified'}")
            return self._stated(self._current)

    def _stated(self, revision: Revision) -> Revision:
        """`revision` with the source's state now."""
        state = SourceState(self.failure, self.unverified, self.verified)
        return revision if state == revision.state else replace(revision, state=state)

    def _advance(self, repo: git.Repo, sha: str) -> None:
        """Take the new head, if it passes verification; else keep the current one and say why (once)."""
        signer = ""
        if self.verifier is not None:
            last = self._heads.last_verified(self.url, self.branch) if self._heads is not None else None
            last = last or ((self._current.sha, self._current.signer) if self._current else None)
            strict = self.verifier.mode == "strict"
            recalled = self._heads.recalled() if last is None and self._heads is not None else []
            if recalled:  # a lost state dir: what the targets remember
                newest = self._newest(repo, recalled)
                if not newest and strict:  # not in the branch's history (a force-push): a server may still serve it
                    self._fetch_commits(repo, recalled)
                    newest = self._newest(repo, recalled)
                last = (newest, "") if newest else None
            if strict and recalled and last is None and not self.verifier.allow_rewrite:
                verdict = Verdict(failure=f"{sha[:12]}: the last verified head {recalled[0][:12]} (remembered by the "
                                          "cluster's ledger) is not in the branch's history: a rewrite or rollback; "
                                          "the daemon setting verify_allow_rewrite accepts it")
            else:
                verdict = self.verifier.check(repo, sha, last[0] if last else "")
            if verdict.failure:
                if self._current is None and last is not None:  # a restart: the last verified head stays applied
                    with contextlib.suppress(git.GitCommandError):  # gone from the cache: nothing to apply
                        self._current = self._revision(repo, last[0], last[1])
                        self.verified = last[0]
                if self.unverified is None or self.unverified[0] != sha:
                    log.error("git: revision %s is not applied: %s (the last good revision %s stays)", sha[:12],
                              verdict.failure, self._current.short if self._current else "(none yet)")
                    self._observe("verify", "error", 0.0)
                self.unverified = (sha, verdict.failure)
                return
            if self._heads is not None:
                self._heads.record_verified(self.url, self.branch, sha, verdict.signer)
            signer, self.verified = verdict.signer, sha
        self.unverified = None
        self._current = self._revision(repo, sha, signer)

    @staticmethod
    def _newest(repo: git.Repo, candidates: list[str]) -> str:
        """Of the commits `candidates` (those in the cache), the one every other is an ancestor of, else the
        latest committed ("" for none)."""
        known = []
        for sha in dict.fromkeys(candidates):
            with contextlib.suppress(git.GitCommandError):
                known.append((float(repo.git.log("-1", "--format=%ct", sha)), sha))
        for _, sha in known:
            if all(descends(repo, other, sha) for _, other in known):
                return sha
        return max(known)[1] if known else ""

    def _fetch_commits(self, repo: git.Repo, shas: list[str]) -> None:
        """Fetch commits by id, into no ref; those the server does not serve are left out."""
        for sha in dict.fromkeys(shas):
            if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", sha):
                with contextlib.suppress(git.GitCommandError), \
                        repo.git.custom_environment(**self._fetch_environment()):
                    repo.git.fetch("--no-tags", "origin", sha)

    def revision(self, sha: str) -> Revision:
        """The snapshot of an earlier commit (an environment waiting for a promotion stays on its last
        applied revision); read once under the lock, like a fetched one, and kept (at most 8)."""
        with self._lock:
            if self._current is not None and self._current.sha == sha:
                return self._current
            if sha not in self._older:
                try:
                    self._older[sha] = self._revision(self._open(), sha)
                except git.GitCommandError as exc:
                    raise TemporaryError(f"revision {sha[:12]} cannot be read: {redact(str(exc)).strip()[-200:]}") \
                        from None
                while len(self._older) > 8:
                    del self._older[next(iter(self._older))]
            return self._older[sha]

    def contains(self, newer: str, older: str) -> bool:
        """`older` is `newer` or one of its ancestors (so `newer` carries its changes)."""
        if newer == older:
            return True
        with self._lock:
            return descends(self._open(), older, newer)

    def _fetch_environment(self) -> dict[str, str]:
        """Never prompt; credentials from the URL go to git through an askpass helper and this process's
        child environment, never to a file."""
        if not self._credentials:
            return {"GIT_TERMINAL_PROMPT": "0"}
        helper = self.root / "git-askpass"
        if not helper.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            helper.write_text(ASKPASS)
            helper.chmod(0o700)
        return {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": str(helper), **self._credentials}

    def _revision(self, repo: git.Repo, sha: str, signer: str = "") -> Revision:
        fields = repo.git.log("-1", "--format=%ct%x00%an%x00%s", sha).split("\0")
        return Revision(sha, float(fields[0]), read_snapshot(repo, sha), subject=fields[2][:200],
                        author=fields[1][:100], signer=signer)

    def _failed(self, exc: Exception) -> None:
        text = redact(str(exc)).strip()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = redact(lines[-1] if lines else type(exc).__name__)[:300]
        if self.failure is None:
            log.error("git fetch of %s branch %s failed: %s (the last good revision %s stays applied)",
                      redact(self.url), self.branch, reason, self._current.short if self._current else "(none yet)")
            self.failure = FetchFailure(time.time(), reason)
        elif self.failure.reason != reason:
            self.failure = FetchFailure(self.failure.since, reason)

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
