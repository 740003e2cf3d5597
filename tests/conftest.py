"""Shared test helpers: real Git repositories (a bare "remote" and a working clone, file://)."""
from __future__ import annotations

import socket
from pathlib import Path

import git
import pytest


class GitRemote:
    """A bare repository plus a working clone that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare_path = root / "remote.git"
        git.Repo.init(self.bare_path, bare=True, initial_branch="main")
        self.work_path = root / "work"
        self.repo = git.Repo.clone_from(str(self.bare_path), self.work_path)
        with self.repo.config_writer() as cfg:
            cfg.set_value("user", "name", "Test").set_value("user", "email", "test@example.invalid")
        self.repo.git.checkout("-b", "main")

    @property
    def url(self) -> str:
        return str(self.bare_path)

    def write(self, path: str, text: str) -> None:
        target = self.work_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def remove(self, path: str) -> None:
        self.repo.index.remove([path], working_tree=True)

    def commit(self, message: str) -> str:
        self.repo.git.add(A=True)
        self.repo.index.commit(message)
        self.repo.git.push("origin", "main")
        return self.repo.head.commit.hexsha

    def revert(self, sha: str) -> str:
        self.repo.git.revert(sha, no_edit=True)
        self.repo.git.push("origin", "main")
        return self.repo.head.commit.hexsha


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    return GitRemote(tmp_path)


def state_files(state: Path) -> dict[Path, bytes]:
    """A state dir's files and contents, less SQLite's reader files: -shm (its index of readers, which a reader
    touches) and an empty -wal (the log a read-only look opens once the daemon has closed the ledger)."""
    return {p: data for p in state.rglob("*") if p.is_file() and not p.name.endswith("-shm")
            for data in [p.read_bytes()] if data or not p.name.endswith("-wal")}


def stop_local_clusters(state_dir: Path) -> None:
    """Stop, by PID, every local Ray cluster recorded under `state_dir` (what a test, failed or killed, left
    running)."""
    from reconciler.targets.local.runtime import LocalRayCluster  # Ray's processes, only where a test has them
    clusters = state_dir / "local" / "clusters"
    for record in clusters.glob("*/cluster.json") if clusters.exists() else []:
        cluster = LocalRayCluster.adopt(record.parent.name, clusters)
        if cluster is not None:
            cluster.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEIGHBOURS = ("n1", "n2")  # environments e2e and integration tests run beside the one under test


def write_neighbours(remote: GitRemote, names: tuple[str, ...] = NEIGHBOURS, interval: str = "2s") -> None:
    """Cheap environments on the local target (one ConfigMap each, no Ray), so every test runs several
    environments at once, as users do."""
    for name in names:
        remote.write(f"environments/{name}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\n"
                     f"kind: Environment\nmetadata: {{name: {name}}}\nspec: {{target: {{local: {{}}}}, "
                     f"interval: {interval}}}\n")
        remote.write(f"environments/{name}/settings.yaml",
                     f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{owner: {name}}}\n")
