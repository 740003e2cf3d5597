"""Kubernetes Events on the objects ray-gitops changes: what was done, from which revision.

Queued by `KubernetesTarget.report_event` after each applied plan item (never in a steady state, so an
unchanged cycle still writes nothing) and written by the target's `Recorder` in the background. An
Event that cannot be written is logged, never fatal.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ...kubeapi import ApiError, Kube, RateLimiter
from ...model import ENVIRONMENT_LABEL, ObjectRef, Outcome

log = logging.getLogger(__name__)
REASONS = {Outcome.CREATED: "Created", Outcome.CONFIGURED: "Updated", Outcome.RECREATED: "Recreated",
           Outcome.DELETED: "Pruned", Outcome.SUBMITTED: "Submitted", Outcome.FAILED: "Failed"}
COMPONENT = "ray-gitops"
QUEUE_SIZE = 4096  # Events waiting to be written (a first sync of 1000 objects fits)


def event_body(ref: ObjectRef, outcome: Outcome, message: str, environment: str, reason: str = "") -> dict:
    """A core/v1 Event about `ref` (type Warning for failures; `reason` defaults to the outcome's)."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": ref.namespace,
                     "labels": {ENVIRONMENT_LABEL: environment}},
        "involvedObject": {"apiVersion": f"{ref.group}/v1" if ref.group else "v1", "kind": ref.kind,
                           "namespace": ref.namespace, "name": ref.name},
        "reason": reason or REASONS.get(outcome, outcome.value.capitalize()), "message": message[:1024],
        "type": "Warning" if outcome == Outcome.FAILED else "Normal",
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


class Recorder:
    """Sends Events from one background thread (started on the first Event), so writing them never delays
    an apply: under a rate limit of their own (as controller-runtime's recorder has a client of its own),
    from a queue of at most `size` Events (beyond that, new ones are dropped and counted in the log).
    The involved object's uid is looked up in that thread too. `close` sends what is queued, for at most
    `timeout` seconds. Thread-safe."""

    def __init__(self, limiter: RateLimiter, size: int = QUEUE_SIZE) -> None:
        self._limiter = limiter
        self._queue: queue.Queue[tuple[Kube, ObjectRef, Callable[[], str], dict] | None] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._lock = threading.Lock()

    def record(self, kube: Kube, ref: ObjectRef, uid: Callable[[], str], outcome: Outcome, message: str,
               environment: str, reason: str = "") -> None:
        """Queue an Event about `ref` (written as `kube`'s identity); never waits."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="events", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait((kube.limited_by(self._limiter), ref, uid,
                                        event_body(ref, outcome, message, environment, reason)))
            except queue.Full:
                self._dropped += 1

    def flush(self, timeout: float) -> bool:
        """Wait until every queued Event was written (or refused); False if `timeout` seconds passed first."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (at most `timeout` seconds), then stop the thread; a later Event starts it
        again."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        if not self.flush(timeout):
            log.warning("stopping: %d Event(s) not written", self._queue.qsize())
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if entry is None:  # `close`
                    return
                kube, ref, uid, body = entry
                if found := uid():
                    body["involvedObject"]["uid"] = found
                send(kube, ref, body)
            except Exception as exc:  # this thread outlives any one Event
                log.warning("%s: could not record the %s event: %s", ref, body["reason"], exc)
            finally:
                self._report_dropped()
                self._queue.task_done()  # last: `flush` returns once the drops are in the log

    def _report_dropped(self) -> None:
        """Log, once the queue has drained, how many Events were dropped since the last report."""
        with self._lock:
            dropped, self._dropped = (self._dropped, 0) if self._queue.empty() else (0, self._dropped)
        if dropped:
            log.warning("%d Event(s) dropped: more than %d were waiting to be written", dropped, self._queue.maxsize)


def send(kube: Kube, ref: ObjectRef, body: dict) -> None:
    """Write one Event; a failure (RBAC, a gone namespace) is only logged."""
    try:
        kube.request("create", "POST", f"/api/v1/namespaces/{ref.namespace}/events", body=body)
    except ApiError as exc:
        log.warning("%s: could not record the %s event: %s", ref, body["reason"], exc)
