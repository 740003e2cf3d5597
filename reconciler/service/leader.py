"""Leader election with a `coordination.k8s.io/v1` Lease, so only one daemon replica reconciles.

The daemon starts a `LeaderElector` when `leader_election` is on and asks `is_leader()` before it
schedules a reconcile. The semantics are client-go's `leaderelection`: acquire an absent, released
or expired Lease, renew it every retry period, give up when renewal has failed for the renew
deadline, and release it on a clean stop. It knows Leases and clocks, nothing about reconciling.

Clocks. A Lease held by another replica is judged expired with client-go's rule, not by
`renewTime + leaseDurationSeconds < now`: we note, on our own monotonic clock, when we last saw its
record (holder, renewTime, ...) change, and call it expired once it stayed unchanged for its
`leaseDurationSeconds`. No two clocks are ever compared, so skew between nodes or the API server
cannot make two leaders. The cost: takeover after a crash may lag by up to one retry period (the
poll that saw the last change), and a replica that starts while a crashed leader's Lease is on
record waits one full lease duration from its first read. Our own leadership is bounded on the
monotonic clock too: `is_leader()` turns false `renew_deadline` after the start of the last
successful renewal, before any other replica may take over (`lease_duration` > `renew_deadline`).
`renewTime`/`acquireTime` are written from the wall clock for people (and tools) reading the Lease.
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError
from ..kubeapi import ApiError, Kube, connect

log = logging.getLogger(__name__)
JITTER = 0.2  # a candidate waits retry_period x (1 + up to JITTER) between attempts


def default_identity() -> str:
    """Unique per process: `<hostname>_<pid>` (the pod name in a Deployment)."""
    return f"{socket.gethostname()}_{os.getpid()}"


def lease_client(kubeconfig: str = "", context: str = "", count: Callable[[str], None] = lambda verb: None) -> Kube:
    """Requests for the Lease: in-cluster when running in a pod and neither `kubeconfig` nor `context` is
    given, else the kubeconfig (`kubeconfig`, $KUBECONFIG, ~/.kube/config) and its `context`."""
    in_cluster = not kubeconfig and not context and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    return Kube(connect(kubeconfig, context, in_cluster), count)


@dataclass(frozen=True)
class LeaderElectionOptions:
    """Which Lease, who we are, and the timing (seconds; the defaults are client-go's)."""

    name: str
    namespace: str
    kube: Kube
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0  # how long others wait after the Lease last changed
    renew_deadline: float = 10.0  # how long the leader keeps trying to renew before it steps down
    retry_period: float = 2.0     # renewal / acquisition attempt interval
    clock: Callable[[], float] = time.monotonic
    labels: Mapping[str, str] = field(default_factory=dict)  # on the Lease, so a set of Leases can be listed

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period * (1 + JITTER) > 0:
            raise ConfigError(f"leader election: need lease duration ({self.lease_duration:g}s) > renew deadline "
                             f"({self.renew_deadline:g}s) > {1 + JITTER:g} x retry period ({self.retry_period:g}s) > 0")
        if not self.identity:
            raise ConfigError("leader election: identity must not be empty")


@dataclass(frozen=True)
class Record:
    """The Lease spec fields that leader election reads and writes."""

    holder: str = ""
    duration: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def of(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(spec.get("holderIdentity") or "", int(spec.get("leaseDurationSeconds") or 0),
                   spec.get("acquireTime") or "", spec.get("renewTime") or "", int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": self.duration,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time, "leaseTransitions": self.transitions}


@dataclass
class Observed:
    """A Lease's record as last seen, and when (on our monotonic clock) we saw it change: client-go's rule
    for judging another holder's Lease expired without comparing clocks."""

    record: Record | None = None
    since: float = -math.inf

    def see(self, record: Record, now: float) -> None:
        if record != self.record:
            self.record, self.since = record, now

    def expired(self, now: float, default_duration: float) -> bool:
        """Unchanged for its leaseDurationSeconds (`default_duration` when it names none)."""
        duration = (self.record.duration if self.record else 0) or default_duration
        return now - self.since >= duration


class LeaderElector:
    """Holds or waits for one Lease in a background thread (`start()` ... `stop()`).

    `leading` is an Event set while we lead; `on_change(True/False)` is called from the elector's
    thread on each transition (`transitions` counts them). `is_leader()` is the authority: it also
    turns false by itself when renewal stalls, even before the thread notices.
    """

    def __init__(self, options: LeaderElectionOptions,
                 on_change: Callable[[bool], None] = lambda leading: None) -> None:
        self.options = options
        self.on_change = on_change
        self.leading = threading.Event()
        self.transitions = 0
        self._lock = threading.Lock()
        self._renewed_at = -math.inf   # monotonic start of our last successful write
        self._seen = Observed()        # the Lease's record as last read or written
        self._version = ""             # resourceVersion of the Lease as last read or written
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop trying; release the Lease if we hold it, so another replica takes over at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.options.renew_deadline + 5)
        if release and self.leading.is_set():
            self.release()  # checks that the Lease is still ours; the write is resourceVersion-guarded
        self._set_leading(False)

    def _run(self) -> None:
        opts = self.options
        while not self._stopping.is_set():
            self.try_acquire_or_renew()
            if self.leading.is_set():
                wait = opts.retry_period
            else:
                wait = opts.retry_period * (1 + JITTER * random.random())
            self._stopping.wait(wait)

    def is_leader(self) -> bool:
        with self._lock:
            return self.leading.is_set() and self.options.clock() - self._renewed_at < self.options.renew_deadline

    # -- one attempt ---------------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        """One attempt to acquire or renew; True if we lead afterwards. Never raises for API errors."""
        started = self.options.clock()
        try:
            won = self._attempt()
        except _Conflict:
            log.info("leader election: Lease %s/%s changed under us (409); re-reading", self.options.namespace,
                     self.options.name)
            won = False
            self._read_quietly()
        except (ApiError, ValueError, KeyError) as exc:
            log.warning("leader election: Lease %s/%s: %s", self.options.namespace, self.options.name, exc)
            won = False
        if won:
            with self._lock:
                self._renewed_at = started
            self._set_leading(True)
        elif self.leading.is_set():
            observed = self._seen.record
            held_by_other = observed is not None and observed.holder not in ("", self.options.identity)
            if held_by_other or self.options.clock() - self._renewed_at >= self.options.renew_deadline:
                log.error("leader election: lost Lease %s/%s (%s)", self.options.namespace, self.options.name,
                          f"now held by {observed.holder}" if held_by_other and observed else
                          f"not renewed for {self.options.renew_deadline:g}s")
                self._set_leading(False)
        return won

    def _attempt(self) -> bool:
        opts = self.options
        lease = self._get()
        if lease is None:
            stamp = _micro_time()
            self._create(Record(opts.identity, math.ceil(opts.lease_duration), stamp, stamp, 0))
            return True
        old = Record.of(lease)
        seen = opts.clock()  # after the read: a change is never dated earlier than it happened
        self._seen.see(old, seen)
        if old.holder and old.holder != opts.identity and not self._seen.expired(seen, opts.lease_duration):
            return False  # held by another replica
        self._update(self._record(old))
        return True

    def _record(self, old: Record) -> Record:
        stamp = _micro_time()
        mine = old.holder == self.options.identity
        return Record(self.options.identity, math.ceil(self.options.lease_duration),
                      old.acquire_time if mine and old.acquire_time else stamp, stamp,
                      old.transitions if mine else old.transitions + 1)

    def observe(self, lease: dict[str, Any]) -> None:
        """Note the Lease as read by someone else (a list of many Leases), so its expiry is judged from the
        first time it was seen unchanged, not from our own next read. Only from the thread that drives us."""
        self._seen.see(Record.of(lease), self.options.clock())

    def release(self) -> bool:
        """Hand the Lease back (empty holder, 1s duration); False if it is not ours or the write failed."""
        try:
            lease = self._get()
            if lease is None or Record.of(lease).holder != self.options.identity:
                return False
            stamp = _micro_time()
            self._update(Record("", 1, stamp, stamp, Record.of(lease).transitions))
        except (_Conflict, ApiError, ValueError, KeyError) as exc:
            log.warning("leader election: could not release Lease %s/%s: %s", self.options.namespace,
                        self.options.name, exc)
            return False
        log.info("leader election: released Lease %s/%s", self.options.namespace, self.options.name)
        self._set_leading(False)
        return True

    def _set_leading(self, leading: bool) -> None:
        with self._lock:
            if leading == self.leading.is_set():
                return
            if leading:
                self.leading.set()
            else:
                self.leading.clear()
            self.transitions += 1
        log.info("leader election: %s %s Lease %s/%s", self.options.identity,
                 "acquired" if leading else "no longer holds", self.options.namespace, self.options.name)
        self.on_change(leading)

    # -- requests ------------------------------------------------------------------------------------
    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.options.namespace}/leases"

    def _get(self) -> dict[str, Any] | None:
        lease = self.options.kube.get(f"{self._path}/{self.options.name}", timeout=self.options.renew_deadline / 2)
        if lease is None:
            return None
        self._version = lease["metadata"]["resourceVersion"]
        return lease

    def _read_quietly(self) -> None:
        try:
            lease = self._get()
            if lease is not None:
                self._seen.see(Record.of(lease), self.options.clock())
        except (ApiError, ValueError, KeyError):
            pass

    def _create(self, record: Record) -> None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.options.name, "namespace": self.options.namespace,
                             "labels": dict(self.options.labels)}, "spec": record.spec()}
        self._write("create", "POST", self._path, body, record)

    def _update(self, record: Record) -> None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.options.name, "namespace": self.options.namespace,
                             "labels": dict(self.options.labels), "resourceVersion": self._version},
                "spec": record.spec()}
        self._write("update", "PUT", f"{self._path}/{self.options.name}", body, record)

    def _write(self, verb: str, method: str, path: str, body: dict[str, Any], record: Record) -> None:
        try:
            written = self._request(verb, method, path, body)
        except ApiError as exc:
            if exc.status == 409:  # create: AlreadyExists; update: resourceVersion is stale
                raise _Conflict() from exc
            raise
        self._version = written["metadata"]["resourceVersion"]
        self._seen.see(record, self.options.clock())

    def _request(self, verb: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.options.kube.request(verb, method, path, body=body,
                                                           timeout=self.options.renew_deadline / 2)
        return result


class _Conflict(Exception):
    """409 on create or update: another replica wrote the Lease first."""


def _micro_time() -> str:
    """Now as a Kubernetes MicroTime (RFC 3339, always 6 fractional digits)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
