"""`LeaderElector` alone against the real API server: acquire, renew, expiry takeover, 409 races,
release, stepping down. Attempts are driven one by one with fake monotonic clocks, so each test
decides exactly how much time each replica has seen pass; the Lease itself is always real."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import kube_controlplane
import pytest
from kubernetes import client, config

from reconciler.kubeapi import Kube
from reconciler.service.leader import LeaderElectionOptions, LeaderElector
from tests.eventually import eventually

pytestmark = pytest.mark.kube
LEASE = "ray-gitops"


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class GatedClient(client.ApiClient):
    """An ApiClient whose writes (POST/PUT) wait at `gate`, and whose requests fail while `cut` is set (at its
    connection pool, where `Kube` sends every request)."""

    def __init__(self, configuration: client.Configuration, gate: threading.Barrier | None = None) -> None:
        super().__init__(configuration)
        self.gate = gate
        self.cut = False
        self.rest_client.pool_manager = GatedPool(self, self.rest_client.pool_manager)


class GatedPool:
    """The client's urllib3 pool, behind its client's `cut` and `gate`."""

    def __init__(self, owner: GatedClient, pool: Any) -> None:
        self.owner, self.pool = owner, pool

    def urlopen(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.owner.cut:
            raise OSError("connection cut by the test")
        if self.owner.gate is not None and method in ("POST", "PUT"):
            self.owner.gate.wait(timeout=10)
        return self.pool.urlopen(method, url, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


@pytest.fixture
def make_client(kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[Any]:
    made: list[client.ApiClient] = []

    def make(gate: threading.Barrier | None = None) -> GatedClient:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kube_control_plane.kubeconfig), context=kube_control_plane.context,
                                client_configuration=configuration, persist_config=False)
        made.append(GatedClient(configuration, gate))
        return made[-1]

    yield make
    for api_client in made:
        api_client.close()


@pytest.fixture
def coordination(kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[client.CoordinationV1Api]:
    with kube_control_plane.api_client() as api_client:
        yield client.CoordinationV1Api(api_client)


def elector(namespace: str, api_client: client.ApiClient, identity: str, clock: Clock | None = None,
            changes: list[bool] | None = None, **timing: float) -> LeaderElector:
    options = LeaderElectionOptions(LEASE, namespace, Kube(api_client, lambda verb: None), identity=identity,
                                    clock=clock or Clock(),
                                    **{"lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0, **timing})
    return LeaderElector(options, changes.append if changes is not None else lambda leading: None)


def lease(api: client.CoordinationV1Api, namespace: str) -> client.V1LeaseSpec:
    return api.read_namespaced_lease(LEASE, namespace).spec


def test_first_candidate_creates_the_lease_and_the_second_follows(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str) -> None:
    changes: list[bool] = []
    a = elector(kube_namespace, make_client(), "a", changes=changes)
    b = elector(kube_namespace, make_client(), "b")

    assert a.try_acquire_or_renew() and a.is_leader() and a.leading.is_set()
    assert not b.try_acquire_or_renew() and not b.is_leader()

    spec = lease(coordination, kube_namespace)
    assert (spec.holder_identity, spec.lease_duration_seconds, spec.lease_transitions) == ("a", 15, 0)
    assert spec.acquire_time == spec.renew_time
    assert changes == [True] and a.transitions == 1


def test_renewal_moves_renew_time_and_keeps_acquire_time(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str) -> None:
    clock = Clock()
    a = elector(kube_namespace, make_client(), "a", clock)
    a.try_acquire_or_renew()
    first = coordination.read_namespaced_lease(LEASE, kube_namespace)
    time.sleep(0.01)  # renewTime has microseconds; make sure the wall clock moved

    clock.advance(2)
    assert a.try_acquire_or_renew()

    again = coordination.read_namespaced_lease(LEASE, kube_namespace)
    assert again.spec.acquire_time == first.spec.acquire_time
    assert again.spec.renew_time > first.spec.renew_time
    assert again.metadata.resource_version != first.metadata.resource_version
    assert again.spec.lease_transitions == 0 and a.transitions == 1


def test_a_lease_unchanged_for_its_duration_is_taken_over_and_the_old_leader_steps_down(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str) -> None:
    a_changes: list[bool] = []
    a_clock, b_clock = Clock(), Clock()
    a = elector(kube_namespace, make_client(), "a", a_clock, a_changes)
    b = elector(kube_namespace, make_client(), "b", b_clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b notes the record and starts counting on its own clock

    b_clock.advance(14.9)
    assert not b.try_acquire_or_renew()
    b_clock.advance(0.2)
    assert b.try_acquire_or_renew() and b.is_leader()

    spec = lease(coordination, kube_namespace)
    assert (spec.holder_identity, spec.lease_transitions) == ("b", 1)
    a_clock.advance(2)
    assert not a.try_acquire_or_renew()  # it sees b's record: no waiting for its renew deadline
    assert not a.is_leader() and a_changes == [True, False]


def test_each_renewal_seen_restarts_the_wait_whatever_the_wall_clocks_say(
        make_client: Any, kube_namespace: str) -> None:
    a_clock, b_clock = Clock(), Clock()
    a = elector(kube_namespace, make_client(), "a", a_clock)
    b = elector(kube_namespace, make_client(), "b", b_clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()

    for _ in range(3):  # 30s of b's time pass, but a renewed within every 15s b watched
        b_clock.advance(10)
        a_clock.advance(10)
        time.sleep(0.01)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert a.is_leader() and not b.is_leader()


def test_two_candidates_creating_the_lease_at_once_yield_one_leader(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.service.leader")
    gate = threading.Barrier(2)  # both read "no Lease" before either creates it
    a = elector(kube_namespace, make_client(gate), "a")
    b = elector(kube_namespace, make_client(gate), "b")

    won = race(a, b)

    assert sorted(won.values()) == [False, True]
    winner = next(name for name, ok in won.items() if ok)
    assert lease(coordination, kube_namespace).holder_identity == winner
    assert "changed under us (409)" in caplog.text
    loser = b if winner == "a" else a
    assert not loser.is_leader() and not loser.try_acquire_or_renew()


def test_two_candidates_taking_an_expired_lease_at_once_yield_one_leader(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.service.leader")
    old = elector(kube_namespace, make_client(), "old")
    old.try_acquire_or_renew()
    b_clock, c_clock = Clock(), Clock()
    b_client, c_client = make_client(), make_client()
    b = elector(kube_namespace, b_client, "b", b_clock)
    c = elector(kube_namespace, c_client, "c", c_clock)
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    b_client.gate = c_client.gate = threading.Barrier(2)  # both read the same resourceVersion before writing
    b_clock.advance(16)
    c_clock.advance(16)

    won = race(b, c)

    assert sorted(won.values()) == [False, True]
    spec = lease(coordination, kube_namespace)
    assert spec.holder_identity == next(name for name, ok in won.items() if ok)
    assert spec.lease_transitions == 1
    assert "changed under us (409)" in caplog.text


def race(*electors: LeaderElector) -> dict[str, bool]:
    won: dict[str, bool] = {}
    threads = [threading.Thread(target=lambda e=e: won.__setitem__(e.options.identity, e.try_acquire_or_renew()))
               for e in electors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won


def test_release_hands_the_lease_to_the_next_candidate_at_once(
        make_client: Any, coordination: client.CoordinationV1Api, kube_namespace: str) -> None:
    a = elector(kube_namespace, make_client(), "a")
    b = elector(kube_namespace, make_client(), "b")
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()

    assert a.release() and not a.is_leader()
    spec = lease(coordination, kube_namespace)
    assert (spec.holder_identity, spec.lease_duration_seconds) in (("", 1), (None, 1))

    assert b.try_acquire_or_renew()  # no waiting: an empty holder is free
    assert lease(coordination, kube_namespace).lease_transitions == 1
    assert not a.release()  # not ours any more: left alone
    assert lease(coordination, kube_namespace).holder_identity == "b"


def test_a_leader_that_cannot_renew_steps_down_at_the_renew_deadline(
        make_client: Any, kube_namespace: str) -> None:
    clock, changes = Clock(), []
    api_client = make_client()
    a = elector(kube_namespace, api_client, "a", clock, changes)
    assert a.try_acquire_or_renew()
    api_client.cut = True

    clock.advance(2)
    assert not a.try_acquire_or_renew()
    assert a.is_leader(), "one failed renewal is not the end of a term"
    clock.advance(7.9)
    assert a.is_leader()
    clock.advance(0.2)
    assert not a.is_leader(), "is_leader() turns false at the deadline, before the thread notices"
    assert not a.try_acquire_or_renew()
    assert changes == [True, False]

    api_client.cut = False
    assert a.try_acquire_or_renew(), "the Lease is still ours, so the next attempt leads again"
    assert changes == [True, False, True]


def test_threads_elect_one_leader_and_a_stop_hands_over_within_a_retry_period(
        kube_control_plane: kube_controlplane.ControlPlane, kube_namespace: str) -> None:
    timing = {"lease_duration": 4.0, "renew_deadline": 3.0, "retry_period": 0.25}
    with kube_control_plane.api_client() as api_client:
        kube = Kube(api_client, lambda verb: None)
        electors = [LeaderElector(LeaderElectionOptions(LEASE, kube_namespace, kube, identity=name, **timing))
                    for name in ("a", "b", "c")]
        try:
            for e in electors:
                e.start()
            eventually(lambda: sum(e.is_leader() for e in electors) == 1, 5, 0.02, "one leader")
            time.sleep(1)  # several renewals later, still exactly one
            leaders = [e for e in electors if e.is_leader()]
            assert len(leaders) == 1

            started = time.monotonic()
            leaders[0].stop(release=True)
            rest = [e for e in electors if e is not leaders[0]]
            eventually(lambda: sum(e.is_leader() for e in rest) == 1, 3, 0.02, "a new leader")
            assert time.monotonic() - started < timing["lease_duration"], "released, not expired"
        finally:
            for e in electors:
                e.stop(release=False)

