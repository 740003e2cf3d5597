"""Notifications: a JSON POST to each configured URL when an environment's state changes (failed, recovered,
promoted, waiting, removed, unverified), as Flux's notification-controller and Argo CD notifications send.

The daemon calls `Notifier.notify` from its environment threads; it only queues. One background thread per
destination posts, at most BURST at once and then one a second, each message tried ATTEMPTS times (a network
error, 429 or 5xx is retried), so a slow or dead receiver never holds a reconcile. A URL may hold a secret
(Slack's path, a token in the query): only its scheme://host[:port] is ever logged or shown.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..metrics import Metrics
from ..model import SyncStatus

log = logging.getLogger(__name__)
EVENTS = {SyncStatus.FAILED: "failed", SyncStatus.WAITING: "waiting", SyncStatus.REMOVED: "removed",
          SyncStatus.UNVERIFIED: "unverified"}  # entering one of these; plus "recovered" and "promoted"
SLACK_HOST = "hooks.slack.com"
SLACK_PREFIX = "slack+"  # slack+https://...: Slack's format whatever the host (a proxy, Mattermost)
ATTEMPTS = 3  # per message and destination
FIRST_RETRY = 1.0  # seconds, doubling; a Retry-After is honoured up to MAX_RETRY_AFTER
MAX_RETRY_AFTER = 30.0
TIMEOUT = 10.0  # seconds per POST
BURST, RATE = 10, 1.0  # messages per destination: a burst, then this many per second
MAX_QUEUED = 100  # per destination; more are dropped (counted)
MAX_MESSAGE = 2000  # characters of an environment's message in a payload


@dataclass(frozen=True)
class Destination:
    """Where to POST, and in which format."""

    url: str = field(repr=False)  # without the slack+ prefix
    slack: bool = False

    @property
    def shown(self) -> str:
        """scheme://host[:port]: what logs and errors say (the rest may be a secret)."""
        parts = urlsplit(self.url)
        prefix = SLACK_PREFIX if self.slack and parts.hostname != SLACK_HOST else ""
        return f"{prefix}{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # no user:password@ either


def destination(url: str) -> Destination:
    """Parse a configured URL: http(s)://..., Slack's format when the host is hooks.slack.com or the URL starts
    with slack+. Raises ValueError naming only the scheme and host."""
    url = url.strip()
    slack = url.startswith(SLACK_PREFIX)
    parts = urlsplit(url[len(SLACK_PREFIX):] if slack else url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{parts.scheme or '(no scheme)'}://{parts.hostname or '(no host)'}...: not an http(s) URL "
                         "(optionally slack+https://)")
    return Destination(parts.geturl(), slack or parts.hostname == SLACK_HOST)


@dataclass(frozen=True)
class Event:
    """One state change of one environment (the generic payload, as JSON)."""

    event: str
    environment: str
    sync_status: str
    health_status: str
    revision: str  # the revision the environment is on now ("" if none)
    previous_revision: str  # the one it was on at the last notification
    attempted: str  # the branch head this reconcile worked on (a failed or waiting one is not applied)
    message: str
    time: float
    repo: str  # redacted
    branch: str


def transition(before: tuple[SyncStatus, str] | None, sync: SyncStatus, revision: str, changed: bool) -> str:
    """The event between the last state (sync status, revision; None: never reported) and this one ("": none):
    entering Failed, Waiting, Removed or Unverified; Synced after Failed (recovered); Synced at a new revision that
    changed the environment's objects (promoted)."""
    was, had = before or (None, "")
    if sync in EVENTS:
        return EVENTS[sync] if sync != was else ""
    if sync == SyncStatus.SYNCED and was == SyncStatus.FAILED:
        return "recovered"
    if sync == SyncStatus.SYNCED and changed and revision and revision != had:
        return "promoted"
    return ""


def payload(event: Event, slack: bool) -> dict[str, Any]:
    """The generic payload (the event's fields), or Slack's incoming-webhook `text`."""
    if not slack:
        return asdict(event)
    escape = lambda text: text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
    at = f" at {event.revision[:12]}" if event.revision else ""
    if event.attempted and event.attempted != event.revision:
        at += f" (head {event.attempted[:12]} not applied)"
    text = (f"ray-gitops: environment *{escape(event.environment)}* {event.event}{at} ({event.sync_status}, "
            f"{event.health_status}; {escape(event.repo)} {escape(event.branch)})")
    first = event.message.splitlines()[0] if event.message else ""
    return {"text": text + (f"\n{escape(first)}" if first else "")}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:  # a redirect is a failure: the body goes where it was told
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes) -> None:
    """POST `body` as JSON; raises urllib.error.HTTPError (status >= 300) or OSError."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", "User-Agent": "ray-gitops"},
                                     method="POST")
    with _OPENER.open(request, timeout=TIMEOUT) as response:
        response.read(64 * 1024)


class Notifier:
    """The destinations and their sending threads."""

    def __init__(self, destinations: list[Destination], metrics: Metrics, repo: str, branch: str,
                 send: Callable[[str, bytes], None] = post, clock: Callable[[], float] = time.monotonic) -> None:
        self.repo, self.branch, self._metrics = repo, branch, metrics
        self._stopping = threading.Event()
        self._channels = [_Channel(d, self._stopping, metrics, send, clock) for d in destinations]

    def notify(self, event: str, environment: str, sync: SyncStatus, health: str, revision: str, previous: str,
               attempted: str, message: str) -> None:
        """Queue one event for every destination (an environment thread; never blocks)."""
        if not self._channels:
            return
        entry = Event(event, environment, sync.value, health, revision, previous, attempted, message[:MAX_MESSAGE],
                      time.time(), self.repo, self.branch)
        for channel in self._channels:
            channel.put(entry)

    def start(self) -> None:
        for channel in self._channels:
            channel.start()

    def stop(self, grace: float = 5.0) -> None:
        """Give the queued messages `grace` seconds, then stop (what is left is dropped: the threads are daemonic)."""
        deadline = time.monotonic() + grace
        for channel in self._channels:
            channel.drained(deadline)
        self._stopping.set()


class _Channel:
    """One destination: its queue, its rate limit (a token bucket) and its thread."""

    def __init__(self, to: Destination, stopping: threading.Event, metrics: Metrics,
                 send: Callable[[str, bytes], None], clock: Callable[[], float]) -> None:
        self.to, self._stopping, self._metrics, self._send, self._clock = to, stopping, metrics, send, clock
        self._queue: queue.Queue[Event] = queue.Queue(MAX_QUEUED)
        self._tokens, self._filled = float(BURST), clock()

    def put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._metrics.notifications.labels("dropped").inc()
            log.warning("notification %s of environment %s to %s dropped: %d already queued", event.event,
                        event.environment, self.to.shown, MAX_QUEUED)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"notify {self.to.shown}", daemon=True).start()

    def drained(self, deadline: float) -> None:
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                event = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._wait_for_token()
                self._deliver(event)
            finally:
                self._queue.task_done()

    def _wait_for_token(self) -> None:
        now = self._clock()
        self._tokens = min(float(BURST), self._tokens + (now - self._filled) * RATE)
        self._filled = now
        if self._tokens < 1:
            self._stopping.wait((1 - self._tokens) / RATE)
            self._tokens, self._filled = 1.0, self._clock()
        self._tokens -= 1

    def _deliver(self, event: Event) -> None:
        body = json.dumps(payload(event, self.to.slack)).encode()
        delay = FIRST_RETRY
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._send(self.to.url, body)
            except urllib.error.HTTPError as exc:
                why, retry = f"HTTP {exc.code}", exc.code == 429 or exc.code >= 500
                after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except OSError as exc:  # refused, unreachable, timed out: its text may name the URL, its type does not
                why, retry, after = type(getattr(exc, "reason", None) or exc).__name__, True, None
            else:
                self._metrics.notifications.labels("sent").inc()
                log.info("notification %s of environment %s sent to %s", event.event, event.environment, self.to.shown)
                return
            if not retry or attempt == ATTEMPTS or self._stopping.is_set():
                break
            self._stopping.wait(after if after is not None else delay)
            delay *= 2
        self._metrics.notifications.labels("failed").inc()
        log.warning("notification %s of environment %s to %s failed after %d attempt(s): %s", event.event,
                    event.environment, self.to.shown, attempt, why)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else None
    except ValueError:
        return None
