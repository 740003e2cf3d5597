"""RayCronJob on the local target: the daemon plays KubeRay's cron controller.

At each control step of the local target (`control.control`, every reconcile of its environment, never a
preview) the slots of its `schedule`
(in `timeZone`, else UTC) that came due since the last one handled are taken: the newest is run if
it is at most `STARTING_DEADLINE` seconds late, every other one is reported as missed (as a
Kubernetes CronJob with `startingDeadlineSeconds` does: nothing is run late). Each run's submission
id is `<env>-<name>-<slot as Unix seconds>`, and the slot is recorded only after the submission, so
a restart can re-submit a slot but never run it twice (the Jobs API refuses a known id). A
suspended RayCronJob runs nothing; the slots it skipped are not run afterwards.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from ...errors import RayGitopsError
from ...model import TERMINAL_JOB_STATUSES, LiveObject, ObjectRef
from ...pipeline.target import RunReport
from .apply import submit
from .clusters import Clusters
from .observe import job_status
from .store import ObjectStore, Record

log = logging.getLogger(__name__)
STARTING_DEADLINE = 300.0  # seconds a slot may be late and still run
KEEP_RUNS = 20  # newest runs a RayCronJob's record follows


def run_id(environment: str, name: str, slot: float) -> str:
    return f"{environment}-{name}-{int(slot)}"


def due_slots(spec: dict[str, Any], after: float, now: float, limit: int = 1000) -> list[float]:
    """The schedule's slots in (after, now], oldest first (at most `limit`)."""
    zone = ZoneInfo(spec["timeZone"]) if spec.get("timeZone") else timezone.utc
    slots = croniter(spec["schedule"], datetime.fromtimestamp(after, zone))
    out: list[float] = []
    while len(out) < limit and (slot := slots.get_next(float)) <= now:
        out.append(slot)
    return out


def control(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef, record: Record,
            now: float | None = None) -> list[RunReport]:
    """The cron controller's step: run the newest due slot (if it is not too late), report the other due slots
    missed, keep each run's final status, and stop a finished run's own cluster when its template asks; the
    missed slots' reports."""
    now = time.time() if now is None else now
    spec, reports, changed = record["manifest"]["spec"], [], False
    slots = due_slots(spec, record["last_slot"], now)
    if slots:
        newest = slots[-1]
        late = slots if now - newest > STARTING_DEADLINE else slots[:-1]
        if not spec.get("suspend"):  # a suspended one skips its slots: nothing is missed
            reports += [RunReport(run_id(environment, ref.name, slot), ref.name, "MISSED") for slot in late]
        if not spec.get("suspend") and now - newest <= STARTING_DEADLINE:
            run = run_id(environment, ref.name, newest)
            try:
                cluster, ephemeral = submit(clusters, ref, environment, spec["jobTemplate"], run,
                                            record.get("revision", ""), None)
            except RayGitopsError as exc:  # the slot stays due: retried at the next step, within the deadline
                log.warning("environment %s: %s: scheduled run %s not submitted: %s", environment, ref, run, exc)
                return reports
            record["runs"] = {**record.get("runs", {}), run: {"cluster": cluster, "ephemeral": ephemeral}}
        for report in reports:
            log.warning("environment %s: %s: the run of %s was missed (more than %.0f s late, or suspended); it is "
                        "not run late", environment, ref, report.submission_id, STARTING_DEADLINE)
        record["last_slot"], changed = newest, True
    for run, info in record.get("runs", {}).items():
        if (info.get("status") or {}).get("jobStatus") in TERMINAL_JOB_STATUSES:
            continue
        status = job_status(clusters, run, info["cluster"])
        if status is not None and status["jobStatus"] in TERMINAL_JOB_STATUSES:
            info["status"], changed = status, True
            if info.get("ephemeral") and spec["jobTemplate"].get("shutdownAfterJobFinishes"):
                clusters.stop(info["cluster"])
    if changed:
        record["runs"] = dict(list(record.get("runs", {}).items())[-KEEP_RUNS:])
        store.save(environment, ref, record)
    return reports


def observe(clusters: Clusters, ref: ObjectRef, record: Record) -> tuple[LiveObject, list[RunReport]]:
    """The RayCronJob as live object and a report on each of its recent runs (reads only)."""
    reports = []
    for run, info in record.get("runs", {}).items():
        status = info.get("status")
        if status is None or status.get("jobStatus") not in TERMINAL_JOB_STATUSES:
            status = job_status(clusters, run, info["cluster"])
            if status is None:
                continue
        reports.append(RunReport(run, ref.name, status["jobStatus"], status.get("startTime"), status.get("endTime")))
    return _live(ref, record), reports


def _live(ref: ObjectRef, record: Record) -> LiveObject:
    last = record.get("last_slot")
    status = {"lastScheduleTime": datetime.fromtimestamp(last, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")} \
        if last and record.get("runs") else {}
    return LiveObject(ref, record["manifest"], status)
