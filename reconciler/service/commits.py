"""Commit subjects, authors and times for the status page. Every branch head the daemon fetches is
added as it comes; a revision it did not fetch (an environment held on an older revision by a
promotion gate, after a restart) is read on the page's worker, never in an HTTP thread. Bounded.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import RayGitopsError
from ..pipeline.source import Revision
from .worker import Worker

MAX_COMMITS = 1024


def describe(revision: Revision) -> dict[str, Any]:
    """A commit as the API shows it."""
    return {"sha": revision.sha, "short": revision.short, "subject": revision.subject, "author": revision.author,
            "commit_time": revision.commit_time}


class Commits:
    """sha -> commit description (None: it could not be read), newest MAX_COMMITS."""

    def __init__(self, worker: Worker, lookup: Callable[[str], Revision]) -> None:
        self._worker, self._lookup = worker, lookup
        self._known: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, revision: Revision) -> None:
        self._keep(revision.sha, describe(revision))

    def known(self, sha: str) -> dict[str, Any] | None:
        """The description of `sha` if it is at hand; looks nothing up."""
        with self._lock:
            return self._known.get(sha)

    def get(self, sha: str) -> dict[str, Any] | None:
        """The description of `sha`, or None while it is looked up on the worker."""
        with self._lock:
            if sha in self._known:
                return self._known[sha]
        if sha:
            self._worker.submit(("commit", sha), lambda: self._read(sha))
        return None

    def _read(self, sha: str) -> bool:
        try:
            found: dict[str, Any] | None = describe(self._lookup(sha))
        except RayGitopsError:  # gone from the repository (a force-push): shown as a bare sha
            found = None
        self._keep(sha, found)
        return True

    def _keep(self, sha: str, found: dict[str, Any] | None) -> None:
        with self._lock:
            self._known[sha] = found
            self._known.move_to_end(sha)
            while len(self._known) > MAX_COMMITS:
                self._known.popitem(last=False)
