"""Notifications: which state change is an event, how URLs are read and shown, the payloads, and one
destination's sending thread (retries, the rate limit) with a recording `send`."""
from __future__ import annotations

import json
import time
import urllib.error
from email.message import Message

import pytest
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import SyncStatus as S
from reconciler.service import notify
from reconciler.service.notify import Event, Notifier, destination, payload, transition


@pytest.mark.parametrize("before, sync, revision, changed, event", [
    pytest.param(None, S.SYNCED, "b", True, "promoted", id="first-apply"),
    pytest.param((S.SYNCED, "a"), S.SYNCED, "b", True, "promoted", id="new-revision-applied"),
    pytest.param((S.SYNCED, "a"), S.SYNCED, "b", False, "", id="new-revision-changing-nothing-here"),
    pytest.param((S.SYNCED, "b"), S.SYNCED, "b", True, "", id="drift-corrected-same-revision"),
    pytest.param((S.SYNCED, "a"), S.FAILED, "", False, "failed", id="failed"),
    pytest.param((S.FAILED, "a"), S.FAILED, "", False, "", id="still-failed"),
    pytest.param((S.FAILED, "a"), S.SYNCED, "a", False, "recovered", id="recovered"),
    pytest.param((S.SYNCED, "a"), S.WAITING, "a", False, "waiting", id="waiting"),
    pytest.param((S.WAITING, "a"), S.SYNCED, "b", True, "promoted", id="gate-opened"),
    pytest.param((S.SYNCED, "a"), S.REMOVED, "c", True, "removed", id="removed"),
    pytest.param((S.SYNCED, "a"), S.UNVERIFIED, "a", False, "unverified", id="unverified"),
    pytest.param((S.SYNCED, "a"), S.STALE, "a", False, "", id="stale-is-not-an-event"),
])
def test_transitions(before, sync, revision, changed, event) -> None:
    assert transition(before, sync, revision, changed) == event


def test_urls_pick_slacks_format_by_host_or_prefix_and_show_only_scheme_and_host() -> None:
    hook = destination("https://hooks.slack.com/services/T0/B0/secret")
    assert hook.slack and hook.shown == "https://hooks.slack.com" and "secret" not in repr(hook)
    proxied = destination("slack+https://user:pw@chat.example:8443/hooks/secret")
    assert proxied.slack and proxied.url == "https://user:pw@chat.example:8443/hooks/secret"
    assert proxied.shown == "slack+https://chat.example:8443"
    assert not destination("http://127.0.0.1:9/x?token=secret").slack
    with pytest.raises(ValueError) as bad:
        destination("ftp://user:secret@host/secret")
    assert "secret" not in str(bad.value)


def test_slack_text_escapes_what_git_authors_wrote() -> None:
    event = Event("failed", "dev", "Failed", "Degraded", "a" * 40, "a" * 40, "b" * 40, "<b>bad</b> & worse\nmore",
                  0.0, "repo", "main")
    assert payload(event, slack=True) == {"text": f"ray-gitops: environment *dev* failed at {'a' * 12} (head "
                                          f"{'b' * 12} not applied) (Failed, Degraded; repo main)\n"
                                          "&lt;b&gt;bad&lt;/b&gt; &amp; worse"}
    assert payload(event, slack=False)["message"] == "<b>bad</b> & worse\nmore"


class Recorder:
    """A `send` that fails as told (an HTTP status or an OSError per call, None: success) and notes each call."""

    def __init__(self, *answers: int | OSError | None) -> None:
        self.answers, self.calls = list(answers), []

    def __call__(self, url: str, body: bytes) -> None:
        self.calls.append((time.monotonic(), url, json.loads(body)))
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, int):
            raise urllib.error.HTTPError(url, answer, "no", Message(), None)
        if answer is not None:
            raise answer


def sent(send: Recorder, events: int, metrics: Metrics) -> Notifier:
    notifier = Notifier([destination("http://127.0.0.1:9/hook?token=secret")], metrics, "repo", "main", send=send)
    notifier.start()
    for i in range(events):
        notifier.notify("failed", f"env{i}", S.FAILED, "Degraded", "a", "a", "b", "boom")
    notifier.stop(grace=10)
    return notifier


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_5xx_and_network_errors_are_retried_a_bounded_number_of_times_and_4xx_not(monkeypatch, metrics) -> None:
    monkeypatch.setattr(notify, "FIRST_RETRY", 0.01)
    count = lambda result: metrics.registry.get_sample_value("ray_gitops_notifications_total",  # noqa: E731
                                                            {"result": result})
    retried = Recorder(503, ConnectionRefusedError(), None)
    sent(retried, 1, metrics)
    assert len(retried.calls) == 3 and retried.calls[0][2] == retried.calls[2][2]
    assert (count("sent"), count("failed")) == (1, None)
    dead = Recorder(*[500] * 10)
    sent(dead, 1, metrics)
    assert len(dead.calls) == notify.ATTEMPTS and count("failed") == 1
    refused = Recorder(404)
    sent(refused, 1, metrics)
    assert len(refused.calls) == 1 and count("failed") == 2


def test_a_burst_is_sent_at_once_and_the_rest_one_a_second(metrics) -> None:
    send = Recorder()
    sent(send, notify.BURST + 2, metrics)
    times = [t - send.calls[0][0] for t, _, _ in send.calls]
    assert len(times) == notify.BURST + 2
    assert times[notify.BURST - 1] < 0.5
    assert 0.9 < times[notify.BURST] < 1.5 and 1.9 < times[notify.BURST + 1] < 2.5, times
