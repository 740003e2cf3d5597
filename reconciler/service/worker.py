"""The status page's background thread: slow work the page needs (plan previews, commit lookups),
done one task at a time so that an HTTP thread never waits for it and its cost stays bounded.

Started and stopped by the daemon; `plans` and `commits` submit to it. A task is queued at most once
per key; a task that answers False (its environment is busy reconciling) is tried again a second later.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)
RETRY = 1.0  # seconds before a busy task is tried again
MAX_QUEUED = 1024  # tasks waiting at once; more are dropped (asked again by the next page refresh)

Task = Callable[[], bool]  # True: done; False: busy, try again later


class Worker:
    """One daemon thread running submitted tasks in order."""

    def __init__(self) -> None:
        self._queue: dict[Hashable, Task] = {}  # insertion-ordered: oldest first
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, task: Task) -> None:
        """Run `task` soon, unless a task with `key` is already waiting."""
        with self._lock:
            if key in self._queue or len(self._queue) >= MAX_QUEUED:
                return
            self._queue[key] = task
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-page", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the running task (which is not interrupted)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(RETRY)
            self._wake.clear()
            with self._lock:
                pending = list(self._queue.items())
            for key, task in pending:
                if self._stopping.is_set():
                    return
                try:
                    done = task()
                except Exception:  # a bug in one task must not stop the page's other work
                    log.exception("status page: %s failed", key)
                    done = True
                if done:
                    with self._lock:
                        self._queue.pop(key, None)
