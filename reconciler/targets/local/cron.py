"""RayCronJob on the local target: the daemon plays the cron controller, with Kubernetes CronJob semantics.

At each control step of the local target (`control.control`, every reconcile of its environment, never a
preview) the slots of its `schedule` (in `timeZone`, else UTC) that came due since the last one handled
are taken, as a Kubernetes CronJob's controller does: only the newest due slot may run, every older one
is reported missed because a newer one was due; the newest is missed too if it is later than
`gitops.ray.io/starting-deadline-seconds` (no deadline by default: a late slot still runs, once). An
unfinished run meets the new slot as `gitops.ray.io/concurrency-policy` says: Allow (both run), Forbid
(the slot waits for it) or Replace (it is stopped). KubeRay's RayCronJob has neither setting. A
suspended RayCronJob runs nothing and keeps its slots due, so on resume the newest runs if its deadline
allows. Each run's submission id is `<env>-<name>-<slot as Unix seconds>`, and the slot is recorded only
after the submission, so a restart can re-submit a slot but never run it twice (the Jobs API refuses a
known id).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from ...errors import RayGitopsError
from ...model import (
    CONCURRENCY_ANNOTATION,
    STARTING_DEADLINE_ANNOTATION,
    TERMINAL_JOB_STATUSES,
    LiveObject,
    Manifest,
    ObjectRef,
)
from ...pipeline.target import RunReport
from .apply import submit
from .clusters import Clusters
from .observe import job_status
from .store import ObjectStore, Record

log = logging.getLogger(__name__)
KEEP_RUNS = 20  # newest runs a RayCronJob's record follows
MISSED_LIMIT = 100  # older slots reported one by one per step (a Kubernetes CronJob gives up counting at 100)


@dataclass(frozen=True)
class Policy:
    """A RayCronJob's Kubernetes CronJob settings: `deadline` seconds a slot may be late and still start
    (None: no limit) and `concurrency` (Allow, Forbid or Replace)."""

    deadline: float | None = None
    concurrency: str = "Allow"

    @classmethod
    def of(cls, manifest: Manifest) -> Policy:
        annotations = (manifest.get("metadata") or {}).get("annotations") or {}
        deadline = annotations.get(STARTING_DEADLINE_ANNOTATION)
        return cls(float(deadline) if deadline is not None else None, annotations.get(CONCURRENCY_ANNOTATION, "Allow"))


@dataclass(frozen=True)
class Due:
    """The slots due at a step: `newest` (None: none), the older ones it supersedes (oldest first, at most
    MISSED_LIMIT; `more`: there were more), and whether `newest` is past its deadline."""

    newest: float | None = None
    superseded: tuple[float, ...] = ()
    more: bool = False
    too_late: bool = False


def run_id(environment: str, name: str, slot: float) -> str:
    return f"{environment}-{name}-{int(slot)}"


def due_slots(spec: dict[str, Any], after: float, now: float, limit: int = 1000) -> list[float]:
    """The schedule's slots in (after, now], oldest first (at most `limit`)."""
    slots = croniter(spec["schedule"], datetime.fromtimestamp(after, _zone(spec)))
    out: list[float] = []
    while len(out) < limit and (slot := slots.get_next(float)) <= now:
        out.append(slot)
    return out


def due(spec: dict[str, Any], after: float, now: float, policy: Policy) -> Due:
    """What is due in (after, now]: the newest slot, however many came before it."""
    newest = croniter(spec["schedule"], datetime.fromtimestamp(now, _zone(spec))).get_prev(float)
    at_now = due_slots(spec, newest, now, 1)  # a slot at `now` itself, which get_prev leaves out
    newest = at_now[0] if at_now else newest
    if newest <= after:
        return Due()
    older = [slot for slot in due_slots(spec, after, newest, MISSED_LIMIT + 1) if slot < newest]
    return Due(newest, tuple(older[:MISSED_LIMIT]), len(older) > MISSED_LIMIT,
               policy.deadline is not None and now - newest > policy.deadline)


def control(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef, record: Record,
            now: float | None = None) -> list[RunReport]:
    """The cron controller's step: keep each run's final status (stopping a finished run's own cluster when its
    template asks), then handle the due slots; the reports of the slots missed."""
    now = time.time() if now is None else now
    before = copy.deepcopy(record)
    spec, policy = record["manifest"]["spec"], Policy.of(record["manifest"])
    active = _follow(clusters, spec, record)
    slots = Due() if spec.get("suspend") else due(spec, record["last_slot"], now, policy)
    reports = [RunReport(run_id(environment, ref.name, slot), ref.name, "MISSED") for slot in slots.superseded]
    if slots.superseded:
        log.warning("environment %s: %s: slot(s) %s%s not run: a newer slot, %s, was due (as a Kubernetes CronJob, "
                    "only the newest due slot runs)", environment, ref, ", ".join(_when(s) for s in slots.superseded),
                    " and more" if slots.more else "", _when(slots.newest or now))
        record["last_slot"] = slots.superseded[-1]
    if slots.newest is not None and slots.too_late:
        reports.append(RunReport(run_id(environment, ref.name, slots.newest), ref.name, "MISSED"))
        log.warning("environment %s: %s: slot %s not run: %.0f s late, more than its %s (%.0f s)", environment, ref,
                    _when(slots.newest), now - slots.newest, STARTING_DEADLINE_ANNOTATION, policy.deadline)
        record["last_slot"] = slots.newest
    elif slots.newest is not None and _start(clusters, environment, ref, record, slots.newest, active, policy):
        record["last_slot"] = slots.newest
    record["runs"] = dict(list(record.get("runs", {}).items())[-KEEP_RUNS:])
    if record != before:
        store.save(environment, ref, record)
    return reports


def _follow(clusters: Clusters, spec: dict[str, Any], record: Record) -> list[str]:
    """Record the final status of the runs that ended (stopping a run's own cluster when the template asks); the
    runs still going."""
    active = []
    for run, info in record.get("runs", {}).items():
        if (info.get("status") or {}).get("jobStatus") in TERMINAL_JOB_STATUSES:
            continue
        status = job_status(clusters, run, info["cluster"])
        if status is None:  # its cluster does not know it (the cluster is gone): not running
            continue
        if status["jobStatus"] not in TERMINAL_JOB_STATUSES:
            active.append(run)
            continue
        info["status"] = status
        if info.get("ephemeral") and spec["jobTemplate"].get("shutdownAfterJobFinishes"):
            clusters.stop(info["cluster"])
    return active


def _start(clusters: Clusters, environment: str, ref: ObjectRef, record: Record, slot: float, active: list[str],
           policy: Policy) -> bool:
    """Start the run of `slot` as the concurrency policy allows; whether the slot is handled (else it stays due)."""
    run = run_id(environment, ref.name, slot)
    if active and policy.concurrency == "Forbid":
        if record.get("waiting") != run:  # said once per slot
            log.info("environment %s: %s: slot %s waits: run %s has not finished (%s: Forbid)", environment, ref,
                     _when(slot), active[-1], CONCURRENCY_ANNOTATION)
            record["waiting"] = run
        return False
    if active and policy.concurrency == "Replace":
        for old in active:
            cluster = clusters.get(record["runs"][old]["cluster"])
            if cluster is not None and cluster.dashboard.stop_job(old):
                log.info("environment %s: %s: run %s stopped: slot %s replaces it (%s: Replace)", environment, ref,
                         old, _when(slot), CONCURRENCY_ANNOTATION)
    try:
        cluster_name, ephemeral = submit(clusters, ref, environment, record["manifest"]["spec"]["jobTemplate"], run,
                                         record.get("revision", ""), None)
    except RayGitopsError as exc:  # the slot stays due: retried at the next step, within its deadline
        log.warning("environment %s: %s: scheduled run %s not submitted: %s", environment, ref, run, exc)
        return False
    record["runs"] = {**record.get("runs", {}), run: {"cluster": cluster_name, "ephemeral": ephemeral}}
    record.pop("waiting", None)
    return True


def _zone(spec: dict[str, Any]) -> tzinfo:
    return ZoneInfo(spec["timeZone"]) if spec.get("timeZone") else UTC


def _when(slot: float) -> str:
    return datetime.fromtimestamp(slot, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    status = {"lastScheduleTime": datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")} \
        if last and record.get("runs") else {}
    return LiveObject(ref, record["manifest"], status)
