"""Shard assignment with fakes: a stable hash, every shard held by exactly one replica at its fair share,
rebalancing when a replica joins, dies or stops, and no hand-over while a reconcile of the shard runs.
Replicas are driven round by round (`Shards.step`) on an in-memory Lease store and a fake clock; the
real API server runs the same code in tests/integration/kube/test_shards.py. Last, the daemon with a
fixed set of shards on the local target: it reconciles and advances only what it owns."""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import ConfigError
from reconciler.kubeapi import ApiError
from reconciler.pipeline.reconcile import ADVANCED
from reconciler.service.config import Settings
from reconciler.service.daemon import Daemon
from reconciler.service.leader import LeaderElectionOptions
from reconciler.service.shards import SET_LABEL, Shards, fair_share, shard_of
from tests.conftest import GitRemote
from tests.unit.test_reconcile import env_yaml

COUNT = 12
LEASE = 3.0
ENVIRONMENTS = [f"env-{i:03d}" for i in range(300)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeLeases:
    """The Lease part of the API server: create (409 if present), get, list by label, update and delete with
    resourceVersion checks (409 when stale)."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0

    def get(self, path: str, timeout: float = 60.0) -> dict[str, Any] | None:
        lease = self.leases.get(path.rsplit("/", 1)[1])
        return copy.deepcopy(lease) if lease else None

    def list(self, path: str, selector: str = "") -> dict[str, Any]:
        key, _, value = unquote(selector).partition("=")
        return {"items": [copy.deepcopy(lease) for lease in self.leases.values()
                          if lease["metadata"].get("labels", {}).get(key) == value]}

    def request(self, verb: str, method: str, path: str, body: Any = None, timeout: Any = 60.0) -> dict[str, Any]:
        name = body["metadata"]["name"] if method == "POST" else path.rsplit("/", 1)[1]
        present = self.leases.get(name)
        if method == "POST" and present is not None:
            raise ApiError(409, "AlreadyExists", name)
        if method == "DELETE":
            if present is None:
                raise ApiError(404, "NotFound", name)
            if body["preconditions"]["resourceVersion"] != present["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", name)
            del self.leases[name]
            return {}
        if method == "PUT" and (present is None or body["metadata"]["resourceVersion"]
                                != present["metadata"]["resourceVersion"]):
            raise ApiError(409, "Conflict", name)
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        return copy.deepcopy(stored)

    def holders(self) -> dict[int, str]:
        return {int(name.rsplit("-", 1)[1]): lease["spec"]["holderIdentity"] for name, lease in self.leases.items()
                if "-shard-" in name}


class Cut:
    """A replica's way to the Leases, which fails while `cut` (a network partition)."""

    def __init__(self, store: FakeLeases) -> None:
        self.store, self.cut = store, False

    def __getattr__(self, verb: str) -> Any:
        if self.cut:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise ApiError(0, "Unavailable", "cut by the test")
            return fail
        return getattr(self.store, verb)


class Replicas:
    """Replicas on one fake store and clock; `running[identity]` is what that replica is reconciling."""

    def __init__(self) -> None:
        self.store, self.clock = FakeLeases(), Clock()
        self.all: dict[str, Shards] = {}
        self.running: dict[str, set[str]] = {}
        self.gained: dict[str, list[set[int]]] = {}
        self.links: dict[str, Cut] = {}

    def add(self, identity: str) -> Shards:
        self.links[identity] = Cut(self.store)
        options = LeaderElectionOptions("ray-gitops", "ray-gitops", self.links[identity],  # type: ignore[arg-type]
                                        identity=identity, lease_duration=LEASE, renew_deadline=2.0,
                                        retry_period=0.5, clock=self.clock)
        self.running[identity], self.gained[identity] = set(), []
        shards = Shards(COUNT, options, lambda: set(self.running[identity]), self.gained[identity].append)
        self.all[identity] = shards
        return shards

    def rounds(self, count: int = 6, live: list[str] | None = None) -> None:
        """`count` rounds of every live replica, the clock moving one retry period per round."""
        for _ in range(count):
            for identity in live if live is not None else list(self.all):
                self.all[identity].step()
            self.clock.now += 0.5

    def owned(self, live: list[str] | None = None) -> dict[str, set[int]]:
        return {i: {n for n in range(COUNT) if self.all[i].electors[n].is_leader() and self.all[i].owns(
            next(e for e in ENVIRONMENTS if shard_of(e, COUNT) == n))} for i in (live or list(self.all))}


def assert_partition(owned: dict[str, set[int]], most: int) -> None:
    """Every shard owned by exactly one replica, none above `most`."""
    counts = sorted(n for shards in owned.values() for n in shards)
    assert counts == list(range(COUNT)), owned
    assert max(map(len, owned.values())) <= most, owned


def test_an_environment_maps_to_the_same_shard_in_every_process_and_the_shards_are_even() -> None:
    # SHA-256 of the name, not Python's per-process salted `hash`: pinned values hold on every replica
    assert [shard_of(name, COUNT) for name in ("prod", "dev", "env-000", "staging")] == [10, 7, 1, 4]
    sizes = [sum(shard_of(e, COUNT) == n for e in ENVIRONMENTS) for n in range(COUNT)]
    assert sum(sizes) == 300 and min(sizes) >= 12 and max(sizes) <= 40, sizes


@pytest.mark.parametrize(("shards", "members", "share"), [
    pytest.param(12, 3, 4, id="even"),
    pytest.param(12, 5, 3, id="rounded-up"),
    pytest.param(2, 3, 1, id="more-replicas-than-shards"),
    pytest.param(12, 0, 12, id="no-member-seen-yet"),
])
def test_the_fair_share_lets_the_replicas_hold_every_shard(shards: int, members: int, share: int) -> None:
    assert fair_share(shards, members) == share
    assert share * max(1, members) >= shards


def test_three_replicas_split_the_shards_and_every_environment_has_one_owner() -> None:
    replicas = Replicas()
    for identity in ("a", "b", "c"):
        replicas.add(identity)
    replicas.rounds(10)
    assert_partition(replicas.owned(), most=4)
    assert {len(s) for s in replicas.owned().values()} == {4}
    for environment in ENVIRONMENTS:
        assert sum(shards.owns(environment) for shards in replicas.all.values()) == 1, environment
    owner = replicas.all["a"].owner(ENVIRONMENTS[0])
    assert owner.replica == replicas.store.holders()[owner.shard]
    assert owner.here == (owner.replica == "a")
    assert all(lease["metadata"]["labels"][SET_LABEL] == "ray-gitops" for lease in replicas.store.leases.values())


def test_replicas_started_together_split_the_shards_without_handing_any_over() -> None:
    replicas = Replicas()
    for identity in ("a", "b", "c"):
        replicas.add(identity)
    replicas.rounds(10)
    for identity, shards in replicas.all.items():
        assert sum(e.transitions for e in shards.electors) == len(replicas.owned()[identity]) == 4, identity


def test_a_new_replica_takes_its_share_without_a_restart_of_the_others() -> None:
    replicas = Replicas()
    for identity in ("a", "b"):
        replicas.add(identity)
    replicas.rounds(10)
    assert {len(s) for s in replicas.owned().values()} == {6}
    before = replicas.owned()
    replicas.add("c")
    replicas.rounds(10)
    after = replicas.owned()
    assert_partition(after, most=4)
    assert len(after["c"]) == 4
    assert after["a"] <= before["a"] and after["b"] <= before["b"], "the old replicas only handed shards over"
    assert replicas.gained["c"] and set().union(*replicas.gained["c"]) == after["c"]


def test_a_dead_replicas_shards_are_taken_over_after_the_lease_duration_not_before() -> None:
    replicas = Replicas()
    for identity in ("a", "b", "c"):
        replicas.add(identity)
    replicas.rounds(10)
    orphaned = replicas.owned()["c"]
    killed = replicas.clock.now
    replicas.rounds(4, live=["a", "b"])  # 2 s < the 3 s lease: c's shards stay c's
    assert replicas.clock.now - killed < LEASE
    assert all(replicas.store.holders()[n] == "c" for n in orphaned)
    assert not any(n in s for s in replicas.owned(["a", "b"]).values() for n in orphaned)
    replicas.rounds(4, live=["a", "b"])  # 4 s: expired, and taken within one more round
    survivors = replicas.owned(["a", "b"])
    assert_partition(survivors, most=6)
    assert replicas.clock.now - killed <= LEASE + 2 * 0.5


def test_a_replica_cut_off_stops_reconciling_before_another_may_take_its_shards() -> None:
    replicas = Replicas()
    for identity in ("a", "b"):
        replicas.add(identity)
    replicas.rounds(10)
    a, b = replicas.all["a"], replicas.all["b"]
    theirs = {e for e in ENVIRONMENTS if a.owns(e)}
    replicas.links["a"].cut = True
    cut = replicas.clock.now
    stopped = taken = None
    while taken is None and replicas.clock.now - cut < 3 * LEASE:
        replicas.rounds(1)
        assert not any(a.owns(e) and b.owns(e) for e in ENVIRONMENTS), "two owners"
        if stopped is None and not any(a.owns(e) for e in theirs):
            stopped = replicas.clock.now - cut
        if taken is None and all(b.owns(e) for e in theirs):
            taken = replicas.clock.now - cut
    assert stopped is not None and taken is not None
    assert stopped <= 2.0 + 0.5 < LEASE <= taken <= LEASE + 2 * 0.5, (stopped, taken)


def test_a_stopped_replica_releases_its_shards_so_they_are_taken_at_once() -> None:
    replicas = Replicas()
    for identity in ("a", "b", "c"):
        replicas.add(identity)
    replicas.rounds(10)
    replicas.all["c"].stop()
    assert "c" not in replicas.store.holders().values()
    replicas.rounds(2, live=["a", "b"])  # 1 s, well within the 3 s lease
    assert_partition(replicas.owned(["a", "b"]), most=6)


def test_a_shard_is_handed_over_only_after_its_running_reconcile_ends() -> None:
    replicas = Replicas()
    a = replicas.add("a")
    replicas.rounds(4)
    assert len(replicas.owned()["a"]) == COUNT
    replicas.running["a"] = set(ENVIRONMENTS)  # every shard busy
    replicas.add("b")
    replicas.rounds(6)
    assert replicas.owned()["b"] == set(), "nothing handed over while a reconcile of it runs"
    handing = {n for n in range(COUNT) if a.electors[n].is_leader() and not a.owns(
        next(e for e in ENVIRONMENTS if shard_of(e, COUNT) == n))}
    assert len(handing) == COUNT // 2, "a schedules nothing new in the shards above its share"
    replicas.running["a"] = set()
    replicas.rounds(4)
    assert_partition(replicas.owned(), most=6)
    assert replicas.owned()["b"] == handing


def test_a_member_lease_of_a_replica_long_gone_is_deleted() -> None:
    replicas = Replicas()
    for identity in ("a", "b"):
        replicas.add(identity)
    replicas.rounds(4)
    gone = replicas.all["b"].member.options.name
    replicas.rounds(int(4 * LEASE / 0.5), live=["a"])
    assert gone not in replicas.store.leases
    assert replicas.all["a"].member.options.name in replicas.store.leases


def test_no_shards_is_a_configuration_error() -> None:
    options = LeaderElectionOptions("x", "y", FakeLeases(), identity="a")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1 shard"):
        Shards(0, options, lambda: ())


class Owned:
    """The part of `Shards` the daemon asks, owning a fixed set of shards."""

    def __init__(self, count: int, shards: set[int]) -> None:
        self.count, self.shards, self.identity = count, shards, "test"

    def owns(self, environment: str) -> bool:
        return shard_of(environment, self.count) in self.shards


def test_the_daemon_reconciles_and_advances_only_the_environments_of_its_shards(
        remote: GitRemote, tmp_path: Path) -> None:
    names = [f"team-{i:02d}" for i in range(12)]
    for env in names:
        remote.write(f"environments/{env}/environment.yaml", env_yaml(env))
        remote.write(f"environments/{env}/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     f"metadata: {{name: settings}}\ndata: {{owner: {env}}}\n")
    remote.commit("twelve environments")
    daemon = Daemon(Settings(repo=remote.url, state_dir=tmp_path / "state"), CollectorRegistry())
    owned = Owned(3, {0})
    daemon.shards = owned  # type: ignore[assignment]
    zero, one = ({e for e in names if shard_of(e, 3) == n} for n in (0, 1))
    assert zero and one

    def turn(gained: frozenset[int] = frozenset()) -> None:
        with daemon._lock:
            daemon._gained |= gained
        with ThreadPoolExecutor(4) as pool:
            daemon._lead()
            daemon._submit(pool, daemon.source.fetch())
        assert all(f.done() and f.exception() is None for f in daemon._running.values())

    def applied() -> set[str]:
        return {p.name for p in (tmp_path / "state" / "local" / "objects").iterdir()}

    def newest(env: str) -> tuple[str, str]:
        """(revision, summary) of its newest history row."""
        revision, _, _, _, summary, _ = daemon.ledger.history(env, 1)[0]
        return revision, summary
    try:
        turn()
        assert applied() == zero and {s.environment for s in daemon.ledger.states()} == zero

        owned.shards = {1}  # shard 0 handed over, shard 1 taken
        turn(gained=frozenset({1}))
        assert applied() == zero | one
        assert daemon.metrics.environments_owned.labels("test")._value.get() == len(one)

        remote.write("NOTES.md", "nothing any environment reads\n")
        notes = remote.commit("notes")
        turn()  # the owned ones move to it without a reconcile, the others are no longer this replica's
        assert {newest(e) for e in one} == {(notes, ADVANCED)}
        assert {newest(e)[0] for e in zero} != {notes}

        owned.shards = {0, 1}
        turn(gained=frozenset({0}))  # shard 0 back: reconciled at once, never advanced on what it read before
        assert all(newest(e)[0] == notes and newest(e)[1] != ADVANCED for e in zero)
    finally:
        daemon.targets.close()
