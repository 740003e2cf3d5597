"""The local target's RayCronJob controller with Kubernetes CronJob semantics, on a fake clock and an in-memory
Jobs API: late slots (no deadline by default, `gitops.ray.io/starting-deadline-seconds`), slots superseded by a
newer one, suspend and resume, and `gitops.ray.io/concurrency-policy` (Allow, Forbid, Replace)."""
from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import CONCURRENCY_ANNOTATION, STARTING_DEADLINE_ANNOTATION, ObjectRef
from reconciler.targets.local import cron
from reconciler.targets.local.observe import cluster_name
from reconciler.targets.local.store import ObjectStore

REF = ObjectRef("ray.io", "RayCronJob", "default", "hourly")
TEMPLATE = {"entrypoint": "python x.py", "clusterSelector": {"ray.io/cluster": "demo"}}


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def run(slot: str) -> str:
    return cron.run_id("a", "hourly", at(slot))


class FakeJobs:
    """The running cluster `demo` and its dashboard's Jobs API: runs submitted, their status (set by the test),
    stops."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.stopped: list[str] = []
        self.dashboard = self

    def submit_job(self, submission_id: str, entrypoint: str, **_: Any) -> None:
        assert submission_id not in self.status, f"{submission_id} submitted twice"
        self.status[submission_id] = "RUNNING"

    def job_info(self, submission_id: str) -> dict[str, Any] | None:
        return {"status": self.status[submission_id]} if submission_id in self.status else None

    def stop_job(self, submission_id: str) -> bool:
        running = self.status.get(submission_id) == "RUNNING"
        self.stopped.append(submission_id)
        self.status[submission_id] = "STOPPED"
        return running


class FakeClusters:
    def __init__(self) -> None:
        self.jobs = FakeJobs()

    def get(self, name: str) -> FakeJobs | None:
        return self.jobs if name == cluster_name("a", "demo") else None


class Controller:
    """A RayCronJob applied with `last_slot`, and the controller's steps at given times."""

    def __init__(self, root: Path, last_slot: str, **annotations: str) -> None:
        self.store, self.clusters = ObjectStore(root / "objects"), FakeClusters()
        manifest = {"apiVersion": "ray.io/v1", "kind": "RayCronJob",
                    "metadata": {"name": "hourly", "annotations": {
                        {"deadline": STARTING_DEADLINE_ANNOTATION, "policy": CONCURRENCY_ANNOTATION}[k]: v
                        for k, v in annotations.items()}},
                    "spec": {"schedule": "0 * * * *", "jobTemplate": copy.deepcopy(TEMPLATE)}}
        self.store.save("a", REF, {"manifest": manifest, "last_slot": at(last_slot), "runs": {}})

    def step(self, now: str) -> list[str]:
        """One control step; the runs reported missed."""
        record = self.store.load("a", REF)
        reports = cron.control(self.clusters, self.store, "a", REF, record, now=at(now))  # type: ignore[arg-type]
        assert {r.status for r in reports} <= {"MISSED"}
        return [r.submission_id for r in reports]

    @property
    def submitted(self) -> list[str]:
        return list(self.clusters.jobs.status)

    @property
    def last_slot(self) -> float:
        return self.store.load("a", REF)["last_slot"]

    def suspend(self, value: bool) -> None:
        record = self.store.load("a", REF)
        record["manifest"]["spec"]["suspend"] = value
        self.store.save("a", REF, record)


def test_a_late_slot_still_runs_once_and_older_ones_say_a_newer_one_was_due(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctl = Controller(tmp_path, "2026-12-03T08:30:00")
    with caplog.at_level(logging.WARNING):
        missed = ctl.step("2026-12-03T11:40:00")  # 40 minutes after the newest slot: no deadline by default

    assert ctl.submitted == [run("2026-12-03T11:00:00")]
    assert missed == [run("2026-12-03T09:00:00"), run("2026-12-03T10:00:00")]
    assert ("slot(s) 2026-12-03T09:00:00Z, 2026-12-03T10:00:00Z not run: a newer slot, 2026-12-03T11:00:00Z, "
            "was due") in caplog.text
    assert "late" not in caplog.text
    assert ctl.last_slot == at("2026-12-03T11:00:00")
    assert ctl.step("2026-12-03T11:59:00") == [] and len(ctl.submitted) == 1  # each slot once


def test_a_slot_later_than_its_starting_deadline_is_missed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctl = Controller(tmp_path, "2026-12-03T09:30:00", deadline="600")
    with caplog.at_level(logging.WARNING):
        assert ctl.step("2026-12-03T10:30:00") == [run("2026-12-03T10:00:00")]
    assert ctl.submitted == [] and ctl.last_slot == at("2026-12-03T10:00:00")
    assert (f"slot 2026-12-03T10:00:00Z not run: 1800 s late, more than its {STARTING_DEADLINE_ANNOTATION} "
            "(600 s)") in caplog.text

    assert ctl.step("2026-12-03T11:09:00") == []  # within the deadline
    assert ctl.submitted == [run("2026-12-03T11:00:00")]


def test_slots_due_while_suspended_run_once_on_resume_unless_past_the_deadline(tmp_path: Path) -> None:
    ctl = Controller(tmp_path, "2026-12-03T11:30:00")
    ctl.suspend(True)
    assert ctl.step("2026-12-03T15:20:00") == [] and ctl.submitted == []
    assert ctl.last_slot == at("2026-12-03T11:30:00")  # its slots stay due

    ctl.suspend(False)
    assert ctl.step("2026-12-03T15:21:00") == [run(f"2026-12-03T{h}:00:00") for h in (12, 13, 14)]
    assert ctl.submitted == [run("2026-12-03T15:00:00")]

    late = Controller(tmp_path / "late", "2026-12-03T11:30:00", deadline="600")
    late.suspend(True)
    late.step("2026-12-03T15:20:00")
    late.suspend(False)
    assert late.step("2026-12-03T15:21:00")[-1] == run("2026-12-03T15:00:00") and late.submitted == []


@pytest.mark.parametrize("policy, submitted, stopped", [
    pytest.param("Allow", ["11", "12"], [], id="allow-overlaps"),
    pytest.param("Forbid", ["11"], [], id="forbid-waits"),
    pytest.param("Replace", ["11", "12"], ["11"], id="replace-stops-the-old-run"),
])
def test_a_slot_due_while_the_previous_run_goes_on_follows_the_concurrency_policy(
        tmp_path: Path, policy: str, submitted: list[str], stopped: list[str]) -> None:
    ctl = Controller(tmp_path, "2026-12-03T10:30:00", policy=policy)
    ctl.step("2026-12-03T11:00:30")
    ctl.step("2026-12-03T12:00:30")  # the 11:00 run is still RUNNING

    assert ctl.submitted == [run(f"2026-12-03T{h}:00:00") for h in submitted]
    assert ctl.clusters.jobs.stopped == [run(f"2026-12-03T{h}:00:00") for h in stopped]


def test_a_forbidden_slot_runs_when_the_previous_run_ends_or_is_superseded(tmp_path: Path) -> None:
    ctl = Controller(tmp_path, "2026-12-03T10:30:00", policy="Forbid")
    ctl.step("2026-12-03T11:00:30")
    assert ctl.step("2026-12-03T12:00:30") == [] and ctl.last_slot == at("2026-12-03T11:00:00")
    assert ctl.step("2026-12-03T13:00:30") == [run("2026-12-03T12:00:00")]  # a newer slot came due first

    ctl.clusters.jobs.status[run("2026-12-03T11:00:00")] = "SUCCEEDED"
    assert ctl.step("2026-12-03T13:10:00") == []
    assert ctl.submitted == [run("2026-12-03T11:00:00"), run("2026-12-03T13:00:00")]  # 13:00 ran, late
    runs = ctl.store.load("a", REF)["runs"]
    assert runs[run("2026-12-03T11:00:00")]["status"]["jobStatus"] == "SUCCEEDED"
