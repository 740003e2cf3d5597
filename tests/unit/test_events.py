"""The Event recorder: Events are written in the background, under their own rate limit, never lost
to one bad Event, dropped (and said so) only beyond the queue, and flushed on close."""
from __future__ import annotations

import logging
import threading

import pytest

from reconciler.kubeapi import RateLimiter
from reconciler.model import ObjectRef, Outcome
from reconciler.targets.kubernetes.events import Recorder

REF = ObjectRef("ray.io", "RayCluster", "team-a", "train")


class FakeKube:
    """Records the Events it is asked to write; can be held (to fill the queue) or made to fail."""

    def __init__(self) -> None:
        self.limiter = RateLimiter(0, 1)
        self.written: list[dict] = []
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()

    def limited_by(self, limiter: RateLimiter) -> FakeKube:
        self.limiter = limiter
        return self

    def request(self, verb: str, method: str, path: str, body: dict) -> dict:
        self.entered.set()
        self.gate.wait(10)
        self.limiter.wait()
        assert (verb, method, path) == ("create", "POST", "/api/v1/namespaces/team-a/events")
        self.written.append(body)
        return {}


def test_events_are_written_in_the_background_with_the_uid_found_there() -> None:
    kube, recorder = FakeKube(), Recorder(RateLimiter(0, 1))
    looked_up = []

    def uid() -> str:
        looked_up.append(threading.current_thread().name)
        return "uid-1"
    recorder.record(kube, REF, uid, Outcome.CREATED, "created: new (revision abc)", "prod")  # type: ignore[arg-type]
    recorder.close()

    assert [(e["reason"], e["involvedObject"]["uid"], e["message"]) for e in kube.written] == [
        ("Created", "uid-1", "created: new (revision abc)")]
    assert looked_up == ["events"]


def test_events_have_a_rate_limit_of_their_own() -> None:
    applies = RateLimiter(1, 1)
    kube, recorder = FakeKube(), Recorder(applies.twin())
    for _ in range(3):
        recorder.record(kube, REF, lambda: "", Outcome.CREATED, "created", "prod")  # type: ignore[arg-type]
    applies.wait()  # the apply path's token is still there: the Events did not take it

    assert applies.wait() > 0.5  # its burst of one is spent by the one apply above
    assert kube.limiter is not applies
    recorder.close(timeout=0.1)


def test_a_failing_uid_lookup_or_write_does_not_stop_the_next_event(caplog: pytest.LogCaptureFixture) -> None:
    kube, recorder = FakeKube(), Recorder(RateLimiter(0, 1))

    def broken() -> str:
        raise RuntimeError("cache gone")
    recorder.record(kube, REF, broken, Outcome.CREATED, "first", "prod")  # type: ignore[arg-type]
    recorder.record(kube, REF, lambda: "", Outcome.DELETED, "second", "prod")  # type: ignore[arg-type]
    assert recorder.flush(10)

    assert [e["message"] for e in kube.written] == ["second"]
    assert "could not record the Created event: cache gone" in caplog.text
    recorder.close()


def test_beyond_the_queue_events_are_dropped_and_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    kube, recorder = FakeKube(), Recorder(RateLimiter(0, 1), size=2)
    kube.gate.clear()
    with caplog.at_level(logging.WARNING):
        recorder.record(kube, REF, lambda: "", Outcome.CREATED, "event 0", "prod")  # type: ignore[arg-type]
        assert kube.entered.wait(10)  # the writer is stuck on the first Event: two more fill the queue
        for n in range(1, 6):
            recorder.record(kube, REF, lambda: "", Outcome.CREATED, f"event {n}", "prod")  # type: ignore[arg-type]
        assert not recorder.flush(0.2)
        kube.gate.set()
        assert recorder.flush(10)

    assert [e["message"] for e in kube.written] == ["event 0", "event 1", "event 2"]
    assert caplog.text.count("Event(s) dropped") == 1 and "3 Event(s) dropped" in caplog.text
    recorder.close()


def test_close_writes_what_is_queued_and_a_later_event_starts_again() -> None:
    kube, recorder = FakeKube(), Recorder(RateLimiter(0, 1))
    recorder.record(kube, REF, lambda: "", Outcome.CREATED, "before", "prod")  # type: ignore[arg-type]
    recorder.close()
    assert [e["message"] for e in kube.written] == ["before"]
    recorder.record(kube, REF, lambda: "", Outcome.CREATED, "after", "prod")  # type: ignore[arg-type]
    recorder.close()

    assert [e["message"] for e in kube.written] == ["before", "after"]
