"""Sharding: several daemon replicas split the environments between them through Leases.

An environment belongs to shard `shard_of(name)` (a stable hash of its name); a shard belongs to the
replica holding its Lease `<id>-shard-<n>`. Each replica also holds a member Lease `<id>-member-<hash>`,
so every replica counts the live replicas and holds at most its fair share, ceil(shards / members):
over it, it stops scheduling the extra shards' environments and releases their Leases once their running
reconciles end (a new replica gets its share without a restart of the others); under it, it takes shards
that are free, released or expired (a dead replica's shards go within its lease duration, plus a retry
period). The daemon asks `owns(name)` before it schedules a reconcile, as it asks `is_leader()`.

Built on `leader.LeaderElector`: one elector per shard Lease and one for the member Lease, all driven by
this module's one thread (the electors' own threads are not started); one LIST of the Leases per round
feeds every elector and the member count, and expiry is judged the electors' skew-free way.
Thread ownership: the `shards` thread owns the electors and the view of the Leases; `owns`, `owner` and
`summary` are called from the daemon's threads and read `_draining`/`_holders` under `_lock` and the
electors' thread-safe `is_leader()`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from ..errors import ConfigError
from ..kubeapi import ApiError
from ..metrics import Metrics
from .leader import JITTER, LeaderElectionOptions, LeaderElector, Observed, Record

log = logging.getLogger(__name__)
SET_LABEL = "gitops.ray.io/shard-set"  # on every shard and member Lease: the value is the Lease id
FORGET_AFTER = 3  # lease durations after which an expired member Lease is deleted (a replica long gone)


def shard_of(environment: str, shards: int) -> int:
    """The shard of an environment: the same on every replica and across restarts (not Python's `hash`)."""
    return int.from_bytes(hashlib.sha256(environment.encode()).digest()[:8], "big") % shards


def fair_share(shards: int, members: int) -> int:
    """The most shards one of `members` replicas may hold: together they can hold every shard."""
    return math.ceil(shards / max(1, members))


def preference(identity: str, shard: int) -> int:
    """How much `identity` wants `shard` (rendezvous hashing): replicas reach for different free shards
    first, and each releases the ones it wants least."""
    return int.from_bytes(hashlib.sha256(f"{identity}/{shard}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Owner:
    """Who reconciles an environment: its shard, the shard Lease's holder ("" while nobody holds it), and
    whether that is this replica."""

    shard: int
    replica: str
    here: bool


class Shards:
    """Holds this replica's share of `count` shard Leases in a background thread (`start()` ... `stop()`).

    `election` names the Lease set (its `name` is the prefix), the namespace, client, identity and timing.
    `running()` returns the environments with a reconcile queued or running (thread-safe): a shard is released
    only when none of its environments is. `changed(gained)` is called from the thread after each round that
    changed what this replica owns, with the shards it newly holds.
    """

    def __init__(self, count: int, election: LeaderElectionOptions, running: Callable[[], Iterable[str]],
                 changed: Callable[[set[int]], None] = lambda gained: None, metrics: Metrics | None = None) -> None:
        if count < 1:
            raise ConfigError(f"shards: need at least 1 shard, got {count}")
        self.count, self.options, self.running, self.changed, self.metrics = count, election, running, changed, metrics
        self.identity = election.identity
        self.prefix = election.name
        labels = {**election.labels, SET_LABEL: self.prefix}
        self.member = LeaderElector(replace(election, name=self.member_name(self.identity), labels=labels))
        self.electors = [LeaderElector(replace(election, name=self.shard_name(n), labels=labels))
                         for n in range(count)]
        self._seen: dict[str, Observed] = {}  # every Lease of the set, by name, as last listed
        self._lock = threading.Lock()
        self._draining: set[int] = set()  # held, no longer scheduled, released once idle
        self._holders: dict[int, str] = {}  # shard -> holder as last listed
        self._members = 1
        self._owned: set[int] = set()  # as at the end of the last round
        self._rounds = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def member_name(self, identity: str) -> str:
        return f"{self.prefix}-member-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"

    def shard_name(self, shard: int) -> str:
        return f"{self.prefix}-shard-{shard}"

    # -- what the daemon asks -----------------------------------------------------------------------------
    def owns(self, environment: str) -> bool:
        """May this replica start a reconcile of `environment` now: it holds the shard's Lease (renewed within
        the renew deadline) and is not handing the shard over."""
        shard = shard_of(environment, self.count)
        with self._lock:
            if shard in self._draining:
                return False
        return self.electors[shard].is_leader()

    def owner(self, environment: str) -> Owner:
        shard = shard_of(environment, self.count)
        if self.owns(environment):
            return Owner(shard, self.identity, True)
        with self._lock:
            return Owner(shard, self._holders.get(shard, ""), False)

    def summary(self) -> dict[str, Any]:
        """For the status API: who we are, how many shards and replicas, and each shard's holder."""
        with self._lock:
            holders = dict(self._holders)
            members = self._members
        return {"replica": self.identity, "shards": self.count, "members": members,
                "owned": sorted(n for n in range(self.count) if self._held(n)),
                "holders": {str(n): holders.get(n, "") for n in range(self.count)}}

    def _held(self, shard: int) -> bool:
        with self._lock:
            draining = shard in self._draining
        return not draining and self.electors[shard].is_leader()

    # -- the loop -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shards", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop, and release every Lease we hold, so the others take our shards over at once. Call it after
        the last reconcile ended."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.options.renew_deadline + 5)
        for elector in [*self.electors, self.member]:
            if elector.leading.is_set():
                elector.release()
        self._report()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.step()
            except Exception:  # a bug must not end the thread: the Leases would lapse silently
                log.exception("shards: round failed; retrying")
            self._stopping.wait(self.options.retry_period * (1 + JITTER * random.random()))

    def step(self) -> None:
        """One round: renew the member Lease, list the set, renew held shards, hand over those above the fair
        share once idle, take free or expired ones below it (from the second round on: replicas started
        together count each other before they take any). Never raises for API errors."""
        self.member.try_acquire_or_renew()
        listed = self._list()
        now = self.options.clock()
        members = self._count_members(now) if listed else self._members
        fair = fair_share(self.count, members)
        held = {n for n, e in enumerate(self.electors) if e.leading.is_set()}
        for shard in sorted(held):
            self.electors[shard].try_acquire_or_renew()
        held = {n for n in held if self.electors[n].leading.is_set()}
        with self._lock:
            self._members = members
            self._draining &= held
            excess = len(held) - fair
            keep = sorted(held, key=lambda n: (n not in self._draining, preference(self.identity, n)))
            self._draining = set(keep[:max(0, excess)])  # the ones already handed over first, then least wanted
            draining = set(self._draining)
        if draining:
            busy = {shard_of(name, self.count) for name in self.running()}  # after `_draining` is set: see owns()
            for shard in sorted(draining - busy):
                if self.electors[shard].release():
                    held.discard(shard)
                    log.info("shards: handed shard %d over (%d replicas, fair share %d)", shard, members, fair)
        self._rounds += 1
        if listed and len(held) < fair and self._rounds > 1:
            free = [n for n in range(self.count) if n not in held and self._takeable(n, now)]
            for shard in sorted(free, key=lambda n: -preference(self.identity, n))[:fair - len(held)]:
                if self.electors[shard].try_acquire_or_renew():
                    held.add(shard)
        self._report()

    # -- parts --------------------------------------------------------------------------------------------
    def _list(self) -> bool:
        """Read every Lease of the set (one LIST) into `_seen` and the shard electors; False if it failed."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.options.namespace)}/leases"
        try:
            items = self.options.kube.list(path, f"{SET_LABEL}={self.prefix}").get("items") or []
        except ApiError as exc:
            log.warning("shards: listing the Leases %s-* in %s: %s", self.prefix, self.options.namespace, exc)
            return False
        now = self.options.clock()
        leases = {lease["metadata"]["name"]: lease for lease in items}
        self._seen = {name: self._seen.get(name) or Observed() for name in leases}
        for name, lease in leases.items():
            self._seen[name].see(Record.of(lease), now)
        holders: dict[int, str] = {}
        for shard, elector in enumerate(self.electors):
            lease = leases.get(self.shard_name(shard))
            if lease is not None:
                elector.observe(lease)
                holders[shard] = Record.of(lease).holder
        with self._lock:
            self._holders = holders
        self._forget_members(leases, now)
        return True

    def _count_members(self, now: float) -> int:
        """Replicas whose member Lease is held and not expired, this one always included."""
        alive = {seen.record.holder for name, seen in self._seen.items()
                 if name.startswith(f"{self.prefix}-member-") and seen.record and seen.record.holder
                 and not seen.expired(now, self.options.lease_duration)}
        return len(alive | {self.identity})

    def _takeable(self, shard: int, now: float) -> bool:
        """Nobody holds the shard's Lease (absent, released), its holder stopped renewing it (expired), or it is
        ours from before (a restarted pod with the same identity)."""
        seen = self._seen.get(self.shard_name(shard))
        return (seen is None or seen.record is None or seen.record.holder in ("", self.identity)
                or seen.expired(now, self.options.lease_duration))

    def _forget_members(self, leases: dict[str, dict[str, Any]], now: float) -> None:
        """Delete member Leases unchanged for FORGET_AFTER lease durations (replicas long gone), guarded by
        their resourceVersion so a replica that renews meanwhile keeps its Lease."""
        for name, lease in leases.items():
            seen = self._seen[name]
            if (not name.startswith(f"{self.prefix}-member-") or name == self.member.options.name
                    or now - seen.since < FORGET_AFTER * self.options.lease_duration):
                continue
            path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(self.options.namespace)}/leases/{name}"
            body = {"preconditions": {"resourceVersion": lease["metadata"]["resourceVersion"]}}
            try:
                self.options.kube.request("delete", "DELETE", path, body=body, timeout=self.options.renew_deadline / 2)
                log.info("shards: deleted the expired member Lease %s", name)
            except ApiError as exc:
                if exc.status not in (404, 409):
                    log.warning("shards: deleting the member Lease %s: %s", name, exc)

    def _report(self) -> None:
        """Metrics, and `changed` when what we own moved."""
        owned = {n for n in range(self.count) if self._held(n)}
        if self.metrics is not None:
            for shard in range(self.count):
                self.metrics.shard_owned.labels(self.identity, str(shard)).set(float(shard in owned))
            self.metrics.shard_members.set(self._members)
        if owned != self._owned:
            gained = owned - self._owned
            log.info("shards: %s owns %d of %d shards (%s)", self.identity, len(owned), self.count,
                     ", ".join(map(str, sorted(owned))) or "none")
            self._owned = owned
            self.changed(gained)
