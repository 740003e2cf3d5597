"""Informer-style cache of one collection (kind, namespace or the whole cluster, label selector): one
LIST, then a WATCH. Objects are keyed by (namespace, name).

The Kubernetes target reads live objects here instead of GETting each one every cycle. A daemon
thread follows the watch from the last resourceVersion (bookmarks included), re-lists on 410 Gone
and reconnects with bounded backoff. The target's own writes are awaited (`expect_*`, `settle`),
so the observe right after an apply sees it. A change someone else made (a watch event that is
not one of our writes: a hand edit, or the operator's status) is handed to `on_change`, so the daemon
can look at its environment at once. Nothing here decides anything about the objects.

Memory: each object is kept as its compact JSON text (a third of the dicts' size at N = 1,000); a read
parses a fresh copy, which its caller owns.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.watch.watch import iter_resp_lines

from ...kubeapi import ApiError, Kube
from .body import written_only_by

log = logging.getLogger(__name__)
Transform = Callable[[dict[str, Any]], dict[str, Any]]


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _essence(obj: dict[str, Any] | None) -> Any:
    """What a change is about: the object without its status and the metadata every write changes (None: none)."""
    if obj is None:
        return None
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion", "managedFields",
                                                                              "generation")}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _parsed(item: bytes | None) -> dict[str, Any] | None:
    return None if item is None else json.loads(item)


def _version(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class Informer:
    """The objects of one collection, kept current by a watch thread."""

    def __init__(self, kube: Kube, path: str, selector: str = "", transform: Transform | None = None,
                 watch_seconds: int = 300, backoff: tuple[float, float] = (0.5, 30.0),
                 on_change: Callable[[dict[str, Any]], None] | None = None, manager: str = "") -> None:
        self.kube, self.path, self.selector = kube, path, selector
        self.transform = transform or (lambda obj: obj)
        self.on_change = on_change  # called (in the watch thread) with an object someone else changed
        self.manager = manager  # our field manager: an object only it (and status writers) wrote is no one else's
        self._ours: collections.deque[str] = collections.deque(maxlen=4096)  # versions and uids of our own writes
        self.watch_seconds, self.backoff = watch_seconds, backoff
        self._items: dict[tuple[str, str], bytes] = {}  # compact JSON (`_compact`)
        self._version = ""
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._expected: list[Callable[[], bool | None]] = []  # each: met / not yet / cannot tell (None)

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> Informer:
        """LIST now (so the first read is complete), then follow the WATCH in a daemon thread."""
        self._list()
        self._thread = threading.Thread(target=self._run, name=f"watch {self.path}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()  # unblocks the watch thread's read
            except Exception:  # already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def restart_from(self, resource_version: str) -> None:
        """Drop the current watch and resume from `resource_version` (tests: an expired version)."""
        with self._cond:
            self._version = resource_version
        response = self._response
        if response is not None:
            response.shutdown()

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            item = self._items.get((namespace, name))
        return _parsed(item)

    def items(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every object, or those of `namespace`."""
        with self._cond:
            items = [v for k, v in self._items.items() if namespace is None or k[0] == namespace]
        return [json.loads(item) for item in items]

    @property
    def resource_version(self) -> str:
        with self._cond:
            return self._version

    # -- read your own writes ------------------------------------------------------------------------
    def expect_version(self, resource_version: str) -> None:
        """Our write produced `resource_version`: reads wait until the watch got that far."""
        wanted = _version(resource_version)
        self._ours.append(resource_version)

        def met() -> bool | None:
            have = _version(self._version)
            return None if wanted is None or have is None else have >= wanted
        with self._cond:
            self._expected.append(met)

    def expect_gone(self, namespace: str, name: str, uid: str) -> None:
        """We deleted `name` (uid): reads wait until the watch reported it gone (or replaced)."""
        self._ours.append(uid)

        def met() -> bool:
            item = _parsed(self._items.get((namespace, name)))
            return item is None or (item.get("metadata") or {}).get("uid") != uid
        with self._cond:
            self._expected.append(met)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every expected write is visible; if the watch cannot show it in time, LIST again."""
        with self._cond:
            if not self._expected:
                return
            self._cond.wait_for(lambda: self._met() is not False, timeout)
            met = self._met()
            self._expected.clear()
        if met is not True:
            log.info("watch %s does not show our writes (yet); listing again", self.path)
            self._list()

    def _met(self) -> bool | None:
        results = [check() for check in self._expected]
        return None if None in results else all(results)

    # -- list and watch ------------------------------------------------------------------------------
    def _list(self, replace: bool = False) -> None:
        """LIST the collection; keep the result unless the cache is already newer (`replace`: keep it anyway).
        Items of built-in kinds come without `apiVersion` and `kind` (custom resources have them): they get
        the list's, so a listed object looks as a watched one (and a Secret's values can be hidden)."""
        data = self.kube.list(self.path, self.selector)
        typed = {"apiVersion": data.get("apiVersion"), "kind": str(data.get("kind") or "").removesuffix("List")}
        items = {_key(i): _compact(self.transform({**typed, **i})) for i in data.get("items") or []}
        version = str(data["metadata"].get("resourceVersion") or "")
        with self._cond:
            new, have = _version(version), _version(self._version)
            if not replace and new is not None and have is not None and new < have:
                return  # a concurrent list (or the watch) is already newer
            self._items, self._version = items, version
            self._cond.notify_all()

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                if self._watch():
                    delay = self.backoff[0]
                elif self._stop.wait(self.backoff[0]):  # an empty stream: do not spin
                    return
                continue
            except Gone:
                log.info("watch %s: resourceVersion %s expired; listing again", self.path, self._version)
            except Exception as exc:  # the API server restarting, a network error: retry with backoff
                if self._stop.is_set():
                    return
                log.warning("watch %s failed (%s); retrying in %.1fs", self.path, exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.backoff[1])
                continue
            try:
                self._list(replace=True)
            except Exception as exc:
                log.warning("list %s failed (%s); retrying in %.1fs", self.path, exc, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.backoff[1])

    def _watch(self) -> bool:
        """Follow one watch request until the server ends it; True if it delivered anything."""
        try:
            response = self.kube.watch(self.path, self.resource_version, self.selector, self.watch_seconds)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone() from exc
            raise
        self._response = response
        if self._stop.is_set():  # stopped while the request was in flight: `stop` saw no response to shut
            response.close()
            return False
        delivered = False
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return delivered
                if line:
                    self._event(json.loads(line))
                    delivered = True
        finally:
            self._response = None
            response.close()
        return delivered

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiError(int(obj.get("code") or 0), str(obj.get("reason") or ""), str(obj.get("message") or ""), obj)
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or "")
        with self._cond:
            have = _version(self._version)
            if have is not None and (_version(version) or 0) <= have:
                return  # already in the list we took after this event was sent
            old, new = _parsed(self._items.get(_key(obj))), None
            if kind in ("ADDED", "MODIFIED"):
                new = self.transform(obj)
                self._items[_key(obj)] = _compact(new)
            elif kind == "DELETED":
                self._items.pop(_key(obj), None)
            self._version = version or self._version
            self._cond.notify_all()
        moved = _essence(old) != _essence(new)  # else at most its status moved: never one of our writes
        ours = version in self._ours or (kind == "DELETED" and meta.get("uid") in self._ours) or (
            moved and kind != "DELETED" and bool(self.manager)
            and written_only_by(new or {}, self.manager))  # our write, seen before we noted its version
        if self.on_change is not None and kind != "BOOKMARK" and not ours and (
                moved or (old or {}).get("status") != (new or {}).get("status")):
            self.on_change(new or old or {})
