"""What the fault drills share: a seeded RNG printed for reruns, a kill -9 at a random point after an
anchor line of the daemon's log, the SQLite ledger read directly, and a sweep for processes left behind.

The drills read the ledger with plain SQL rather than through `reconciler`, so a bug in the ledger
code cannot hide itself. Opening it may replay a write-ahead log left by a kill: SQLite does the same
for the next daemon, so this changes nothing the daemon would see.
"""
from __future__ import annotations

import os
import random
import re
import secrets
import signal
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon import DaemonProcess
from tests.eventually import eventually

SEED_VARIABLE = "RAY_GITOPS_FAULT_SEED"


def seeded_rng(drill: str) -> tuple[random.Random, int]:
    """A fresh seed per run (or $RAY_GITOPS_FAULT_SEED), printed so a failure can be replayed."""
    seed = int(os.environ.get(SEED_VARIABLE) or secrets.randbits(32))
    print(f"{drill}: seed {seed} (replay with {SEED_VARIABLE}={seed})")
    return random.Random(seed), seed


def wait_for_line(log: Path, text: str | re.Pattern[str], start: int = 0, timeout: float = 60.0,
                  daemon: DaemonProcess | None = None) -> float:
    """Poll `log` (from byte `start`) every 2 ms until `text` (or the pattern) appears; the monotonic
    time it was seen."""
    pattern = text if isinstance(text, re.Pattern) else re.compile(re.escape(text))

    def seen() -> float | None:
        with log.open("rb") as f:
            f.seek(start)
            if pattern.search(f.read().decode(errors="replace")):
                return time.monotonic()
        if daemon is not None and daemon.proc.poll() is not None:
            pytest.fail(f"daemon exited ({daemon.proc.returncode}) before {pattern.pattern!r}:\n{tail(log)}")
        return None
    return eventually(seen, timeout, 0.002, lambda: f"{pattern.pattern!r} in {log}:\n{tail(log)}")


def kill9(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon's PID and reap it."""
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(30)


def tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def assert_clean_logs(logs: Path, seed: int) -> None:
    """No daemon's log in `logs` holds a traceback or an ERROR line, however it was killed."""
    for log in sorted(logs.iterdir()):
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, f"seed {seed}: {log.name}:\n{tail(log)}"


@dataclass(frozen=True)
class LedgerView:
    """The daemon's SQLite ledger (`<state>/ledger.sqlite3`), read with plain SQL."""

    path: Path

    def _query(self, sql: str, *args: object) -> list[tuple]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db:
            return db.execute(sql, args).fetchall()

    def integrity(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    def inventory(self, env: str) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every object the environment owns."""
        return set(self._query("SELECT kind, namespace, name FROM inventory WHERE env=?", env))

    def states(self) -> dict[str, tuple[str, str]]:
        """environment -> (revision, sync status)."""
        rows = self._query("SELECT env, revision, sync_status FROM environments")
        return {env: (revision, sync) for env, revision, sync in rows}

    def history(self, env: str) -> list[tuple[str, str]]:
        """(revision, result) rows, oldest first."""
        return self._query("SELECT revision, result FROM revisions WHERE env=? ORDER BY id", env)

    def runs(self, env: str) -> dict[str, tuple[str, str | None]]:
        """submission id -> (job, result)."""
        return {sid: (job, result) for sid, job, result in
                self._query("SELECT submission_id, job, result FROM job_runs WHERE env=?", env)}

    def converged(self, envs: tuple[str, ...], sha: str) -> bool:
        states = self.states() if self.path.exists() else {}
        return all(states.get(env) == (sha, "Synced") for env in envs)


def leftovers(root: Path) -> list[int]:
    """PIDs (other than this process) whose working directory is under `root` or whose command line
    names it: what a test started there and did not stop."""
    found, text = [], str(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd.startswith(text) or text in cmdline):
            found.append(int(entry.name))
    return found


def stop_leftovers(root: Path, grace: float = 5.0) -> list[int]:
    """Wait up to `grace` seconds for processes under `root` to end by themselves (a git child of a
    killed daemon finishes its fetch), then SIGKILL each remaining PID; the PIDs that had to be killed."""
    deadline = time.monotonic() + grace
    while (pids := leftovers(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
