"""Two `ray-gitops run` replicas, one Lease on the real API server, one Git repository: only the
leader reconciles, a `kill -9` hands over within a lease duration, a SIGTERM hands over at once.

The environment targets `local` and holds no objects, so a reconcile renders, plans and reports
without starting Ray. Every daemon is stopped by its PID, pass or fail.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import kube_controlplane
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GitRemote, free_port
from tests.eventually import eventually

pytestmark = pytest.mark.kube
ENVIRONMENT = """\
apiVersion: gitops.ray.io/v1alpha1
kind: Environment
metadata: {name: x}
spec:
  target: {local: {}}
  interval: 1s
"""
RETRY = 0.5
SLACK = 2.0  # process scheduling, the first fetch and render, our 0.1s polling


class Replica:
    """`ray-gitops run --leader-election` in a subprocess, with its metrics endpoint."""

    def __init__(self, name: str, repo: str, tmp: Path, plane: kube_controlplane.ControlPlane, namespace: str,
                 lease_duration: float) -> None:
        self.name, self.port, self.log = name, free_port(), tmp / f"{name}.log"
        cmd = [sys.executable, "-m", "reconciler", "run", "--repo", repo, "--state-dir", str(tmp / f"{name}-state"),
               "--interval", "1s", "--metrics-address", f"127.0.0.1:{self.port}",
               "--leader-election", "--leader-election-namespace", namespace, "--leader-election-id", "ray-gitops",
               "--kubeconfig", str(plane.kubeconfig), "--kube-context", plane.context,
               "--leader-election-lease-duration", f"{lease_duration}s",
               "--leader-election-renew-deadline", f"{lease_duration * 2 / 3}s",
               "--leader-election-retry-period", f"{RETRY}s"]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.identity = f"{socket.gethostname()}_{self.proc.pid}"

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def leader(self) -> float | None:
        samples = self.samples()
        return None if samples is None else samples.get(("ray_gitops_leader", frozenset({("identity", self.identity)})))

    def reconciles(self) -> float:
        """Sum of ray_gitops_reconcile_total over its labels (0 when there is no sample at all)."""
        samples = self.samples() or {}
        return sum(v for (name, _), v in samples.items() if name == "ray_gitops_reconcile_total")

    def has_samples(self, metric: str) -> bool:
        return any(name == metric for name, _ in (self.samples() or {}))

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def tail(self) -> str:
        return f"--- {self.name} ({self.identity}) ---\n" + "\n".join(self.log.read_text().splitlines()[-30:])


@pytest.fixture
def start(remote: GitRemote, tmp_path: Path, kube_control_plane: kube_controlplane.ControlPlane,
          kube_namespace: str) -> Iterator[Callable[[str, float], Replica]]:
    remote.write("environments/x/environment.yaml", ENVIRONMENT)
    remote.commit("an empty environment")
    replicas: list[Replica] = []

    def start_replica(name: str, lease_duration: float) -> Replica:
        replicas.append(Replica(name, remote.url, tmp_path, kube_control_plane, kube_namespace, lease_duration))
        return replicas[-1]

    yield start_replica
    for replica in replicas:  # by PID, pass or fail
        replica.stop(signal.SIGKILL)


def wait_for(what: str, check: Callable[[], bool], replicas: list[Replica], timeout: float = 30) -> float:
    """Poll `check` every 0.1s; the seconds it took. Fails with the replicas' log tails."""
    started = time.monotonic()
    eventually(check, timeout, 0.1, lambda: f"{what}\n" + "\n".join(r.tail() for r in replicas))
    return time.monotonic() - started


def one_leader(a: Replica, b: Replica) -> tuple[Replica, Replica]:
    """(leader, follower) once exactly one of them reports ray_gitops_leader 1 and the other 0."""
    wait_for("exactly one leader", lambda: sorted([a.leader(), b.leader()], key=str) == [0.0, 1.0], [a, b])
    return (a, b) if a.leader() == 1 else (b, a)


def test_only_the_leader_reconciles_and_a_killed_leader_is_replaced_within_the_lease_duration(
        start: Callable[[str, float], Replica]) -> None:
    lease = 3.0
    a = start("a", lease)
    wait_for("a leads", lambda: a.leader() == 1, [a])
    b = start("b", lease)
    wait_for("b serves metrics", lambda: b.leader() == 0, [a, b])
    leader, follower = one_leader(a, b)

    before = leader.reconciles()
    assert before > 0
    wait_for("the leader to reconcile three more times (every second)", lambda: leader.reconciles() >= before + 3,
             [a, b])
    assert not follower.has_samples("ray_gitops_reconcile_total"), "the follower reconciles nothing"
    assert not follower.has_samples("ray_gitops_git_requests_total"), "nor fetches"
    assert (follower.status("/readyz"), follower.status("/healthz")) == (200, 200), "a follower is Ready"
    assert leader.status("/readyz") == 200
    assert follower.leader() == 0 and leader.leader() == 1

    leader.stop(signal.SIGKILL)
    killed = time.monotonic()
    wait_for("the follower leads", lambda: follower.leader() == 1, [follower])
    led = time.monotonic() - killed
    wait_for("the new leader reconciles", lambda: follower.reconciles() > 0, [follower])
    reconciled = time.monotonic() - killed

    print(f"kill -9 takeover: leader after {led:.2f}s, first reconcile after {reconciled:.2f}s "
          f"(lease {lease:g}s, retry {RETRY:g}s)")
    assert reconciled <= lease + RETRY + SLACK


def test_a_leader_stopped_by_sigterm_releases_the_lease_so_the_follower_takes_over_at_once(
        start: Callable[[str, float], Replica]) -> None:
    lease = 10.0  # an expiry would take 10s: a takeover well within it can only come from the release
    a = start("a", lease)
    wait_for("a leads", lambda: a.leader() == 1, [a])
    b = start("b", lease)
    wait_for("b serves metrics", lambda: b.leader() == 0, [a, b])
    leader, follower = one_leader(a, b)
    wait_for("the leader reconciles", lambda: leader.reconciles() > 0, [leader])

    leader.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    wait_for("the follower leads", lambda: follower.leader() == 1, [leader, follower])
    led = time.monotonic() - stopped
    wait_for("the new leader reconciles", lambda: follower.reconciles() > 0, [follower])
    reconciled = time.monotonic() - stopped
    assert leader.proc.wait(timeout=30) == 0

    print(f"SIGTERM takeover: leader after {led:.2f}s, first reconcile after {reconciled:.2f}s "
          f"(lease {lease:g}s, retry {RETRY:g}s)")
    assert reconciled <= RETRY * 1.2 + SLACK < lease
    assert "released Lease" in leader.log.read_text()
