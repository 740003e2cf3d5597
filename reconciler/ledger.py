"""Persisted per-environment state: inventory, applied revision history, RayJob run ledger.

Written by the daemon after each step, read by the planner (inventory, finished runs) and by
`ray-gitops status`. SQLite in WAL mode with synchronous=FULL: each write is one transaction, so a
`kill -9` at any point leaves the last committed state. Thread-safe: each thread has its own
connection (SQLite connections are not shared between threads).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .model import LedgerSnapshot, ObjectRef

TERMINAL_JOB_STATUSES = {"SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "stopped"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (env TEXT, grp TEXT, kind TEXT, namespace TEXT, name TEXT,
    PRIMARY KEY (env, grp, kind, namespace, name));
CREATE TABLE IF NOT EXISTS revisions (id INTEGER PRIMARY KEY AUTOINCREMENT, env TEXT, revision TEXT,
    commit_time REAL, applied_at REAL, result TEXT, summary TEXT);
CREATE TABLE IF NOT EXISTS job_runs (env TEXT, submission_id TEXT, job TEXT, spec_hash TEXT, status TEXT,
    result TEXT, submitted_at REAL, start_time REAL, end_time REAL, PRIMARY KEY (env, submission_id));
CREATE TABLE IF NOT EXISTS environments (env TEXT PRIMARY KEY, target TEXT, revision TEXT, sync_status TEXT,
    health_status TEXT, message TEXT, updated_at REAL, detail TEXT);
CREATE TABLE IF NOT EXISTS suspended (env TEXT PRIMARY KEY, since REAL, reason TEXT);
"""


@dataclass(frozen=True)
class JobRun:
    """One RayJob run as the ledger knows it."""

    env: str
    submission_id: str
    job: str
    status: str
    result: str | None
    start_time: float | None
    end_time: float | None


@dataclass(frozen=True)
class EnvironmentState:
    """The last reported state of one environment (what `status` prints)."""

    env: str
    target: str
    revision: str
    sync_status: str
    health_status: str
    message: str
    updated_at: float
    detail: dict


class Ledger:
    """The ledger database under a state directory."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "ledger.sqlite3"
        self._local = threading.local()
        with self._tx() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction on this thread's connection (opened once per thread)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        with db:
            yield db

    def inventory(self, env: str) -> set[ObjectRef]:
        with self._tx() as db:
            rows = db.execute("SELECT grp, kind, namespace, name FROM inventory WHERE env=?", (env,)).fetchall()
        return {ObjectRef(*row) for row in rows}

    def set_inventory(self, env: str, refs: set[ObjectRef]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM inventory WHERE env=?", (env,))
            db.executemany("INSERT INTO inventory VALUES (?,?,?,?,?)",
                           [(env, r.group, r.kind, r.namespace, r.name) for r in refs])

    def record_revision(self, env: str, revision: str, commit_time: float, result: str, summary: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO revisions (env, revision, commit_time, applied_at, result, summary) "
                       "VALUES (?,?,?,?,?,?)", (env, revision, commit_time, time.time(), result, summary))

    def history(self, env: str, limit: int = 50) -> list[tuple[str, float, float, str, str]]:
        """(revision, commit_time, applied_at, result, summary), newest first."""
        with self._tx() as db:
            return db.execute("SELECT revision, commit_time, applied_at, result, summary FROM revisions "
                              "WHERE env=? ORDER BY id DESC LIMIT ?", (env, limit)).fetchall()

    def last_applied(self, env: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT revision FROM revisions WHERE env=? AND result='success' ORDER BY id DESC "
                             "LIMIT 1", (env,)).fetchone()
        return row[0] if row else None

    def record_submission(self, env: str, submission_id: str, job: str, spec_hash: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO job_runs (env, submission_id, job, spec_hash, status, submitted_at) "
                       "VALUES (?,?,?,?,?,?)", (env, submission_id, job, spec_hash, "PENDING", time.time()))

    def update_run(self, env: str, submission_id: str, job: str, status: str, start_time: float | None,
                   end_time: float | None) -> bool:
        """Record a run's status; True exactly once: when the run is first seen terminal."""
        result = TERMINAL_JOB_STATUSES.get(status)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO job_runs (env, submission_id, job, spec_hash, status, submitted_at) "
                       "VALUES (?,?,?,?,?,?)", (env, submission_id, job, submission_id.rsplit("-", 1)[-1],
                                                status, time.time()))
            cursor = db.execute("UPDATE job_runs SET status=?, result=?, start_time=?, end_time=? "
                                "WHERE env=? AND submission_id=? AND result IS NULL",
                                (status, result, start_time, end_time, env, submission_id))
            return bool(result) and cursor.rowcount == 1

    def submitted_runs(self, env: str) -> set[str]:
        """Submission ids of every run ever submitted (finished or not)."""
        with self._tx() as db:
            rows = db.execute("SELECT submission_id FROM job_runs WHERE env=?", (env,)).fetchall()
        return {row[0] for row in rows}

    def mark_vanished(self, env: str, submission_id: str) -> bool:
        """A submitted run whose RayJob disappeared before we saw it end (TTL, DeleteSelf, a person):
        final, result `deleted`; True the first time."""
        with self._tx() as db:
            cursor = db.execute("UPDATE job_runs SET status='DELETED', result='deleted' WHERE env=? AND "
                                "submission_id=? AND result IS NULL", (env, submission_id))
            return cursor.rowcount == 1

    def finished_runs(self, env: str) -> dict[str, str]:
        """submission id -> result (succeeded/failed/stopped) of every finished run."""
        with self._tx() as db:
            rows = db.execute("SELECT submission_id, result FROM job_runs WHERE env=? AND result IS NOT NULL",
                              (env,)).fetchall()
        return dict(rows)

    def runs(self, env: str, limit: int = 20) -> list[JobRun]:
        with self._tx() as db:
            rows = db.execute("SELECT env, submission_id, job, status, result, start_time, end_time FROM job_runs "
                              "WHERE env=? ORDER BY submitted_at DESC LIMIT ?", (env, limit)).fetchall()
        return [JobRun(*row) for row in rows]

    def snapshot(self, env: str, limit: int = 500) -> LedgerSnapshot:
        """Inventory and the newest `limit` runs, for a target that persists them."""
        with self._tx() as db:
            rows = db.execute("SELECT submission_id, COALESCE(result, '') FROM job_runs WHERE env=? "
                              "ORDER BY submitted_at DESC LIMIT ?", (env, limit)).fetchall()
        return LedgerSnapshot(frozenset(self.inventory(env)), tuple(sorted(rows)))

    def merge(self, env: str, snapshot: LedgerSnapshot) -> None:
        """Adopt a target's persisted ledger: its inventory wins, its finished runs are added."""
        self.set_inventory(env, set(snapshot.inventory))
        with self._tx() as db:
            for run, result in snapshot.runs:
                db.execute("INSERT OR IGNORE INTO job_runs (env, submission_id, job, spec_hash, status, submitted_at) "
                           "VALUES (?,?,?,?,?,?)", (env, run, "", run.rsplit("-", 1)[-1], "UNKNOWN", 0.0))
                if result:
                    db.execute("UPDATE job_runs SET result=?, status=UPPER(?) WHERE env=? AND submission_id=? AND "
                               "result IS NULL", (result, result, env, run))

    def suspend(self, env: str, reason: str = "") -> None:
        """`ray-gitops suspend`: the reconcile stage applies nothing to `env` until `resume`."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO suspended VALUES (?,?,?)", (env, time.time(), reason))

    def resume(self, env: str) -> bool:
        """Lift `suspend`; True if it was suspended."""
        with self._tx() as db:
            return db.execute("DELETE FROM suspended WHERE env=?", (env,)).rowcount == 1

    def suspended(self, env: str) -> str | None:
        """The reason given (maybe "") while `env` is suspended by the CLI, else None."""
        with self._tx() as db:
            row = db.execute("SELECT reason FROM suspended WHERE env=?", (env,)).fetchone()
        return row[0] if row else None

    def set_state(self, state: EnvironmentState) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO environments VALUES (?,?,?,?,?,?,?,?)",
                       (state.env, state.target, state.revision, state.sync_status, state.health_status,
                        state.message, state.updated_at, json.dumps(state.detail, sort_keys=True)))

    def states(self) -> list[EnvironmentState]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM environments ORDER BY env").fetchall()
        return [EnvironmentState(*row[:7], json.loads(row[7] or "{}")) for row in rows]
