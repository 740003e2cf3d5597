"""Three `ray-gitops run --shards` replicas and 300 environments on the real API server: every environment
is applied by exactly one replica (their ledgers' history shows one writer per revision), the status API
names the owner, and after a `kill -9` of one replica a commit touching every environment is applied to
the dead replica's environments by the others within 20 s. Then a new replica joins and takes its share
from the two others, which go on without a restart.

Each environment holds one ConfigMap in the test's namespace (no operator needed). Every daemon is stopped
by its PID, pass or fail.
"""
from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kube_controlplane
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from reconciler.pipeline.ledger import Ledger
from reconciler.service.shards import shard_of
from tests.conftest import GitRemote
from tests.daemon import DaemonProcess
from tests.eventually import eventually

pytestmark = [pytest.mark.kube, pytest.mark.e2e]
N = 300
SHARDS = 9
LEASE, RENEW, RETRY = 6.0, 4.0, 1.0
TAKEOVER_BOUND = 20.0
ENVIRONMENTS = [f"e{i:03d}" for i in range(N)]


class Replica(DaemonProcess):
    """A sharded daemon; `identity` is its Lease holder name."""

    def __init__(self, name: str, remote: GitRemote, tmp: Path, plane: kube_controlplane.ControlPlane,
                 namespace: str, key: Path) -> None:
        super().__init__(remote.url, tmp / f"{name}-state", tmp / f"{name}.log", [
            "--interval", "1s", "--shards", str(SHARDS), "--leader-election-namespace", namespace,
            "--leader-election-id", "ray-gitops", "--kubeconfig", str(plane.kubeconfig),
            "--kube-context", plane.context, "--leader-election-lease-duration", f"{LEASE}s",
            "--leader-election-renew-deadline", f"{RENEW}s", "--leader-election-retry-period", f"{RETRY}s"],
            environ={"RAY_GITOPS_INSTALLATION_KEY_FILE": str(key)})
        self.name, self.state = name, tmp / f"{name}-state"
        self.identity = f"{socket.gethostname()}_{self.proc.pid}"

    def owned(self) -> set[int]:
        """The shards its metrics say it holds (one scrape)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            return set()
        return {int(s.labels["shard"]) for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == "ray_gitops_shard_owned" and s.labels["identity"] == self.identity and s.value == 1}

    def api(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}", timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def writes(self, revision: str) -> set[str]:
        """The environments whose ledger history says this replica changed their objects at `revision`."""
        ledger = Ledger(self.state, readonly=True)
        return {env for env in ENVIRONMENTS for row in ledger.history(env, 10)
                if row[0] == revision and row[3] == "success" and (" created" in row[4] or " configured" in row[4])}


def write_revision(remote: GitRemote, namespace: str, value: str) -> str:
    for env in ENVIRONMENTS:
        remote.write(f"environments/{env}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                     f"metadata: {{name: {env}}}\nspec: {{target: {{kubernetes: {{namespace: {namespace}}}}}, "
                     "interval: 10m}\n")
        remote.write(f"environments/{env}/settings.yaml", "apiVersion: v1\nkind: ConfigMap\n"
                     f"metadata: {{name: settings-{env}}}\ndata: {{value: {value}}}\n")
    remote.commit(f"every environment: {value}")
    return remote.repo.head.commit.hexsha


@pytest.fixture
def replicas(remote: GitRemote, tmp_path: Path, kube_control_plane: kube_controlplane.ControlPlane,
             kube_namespace: str) -> Iterator[Callable[[str], Replica]]:
    key = tmp_path / "installation-key"
    key.write_text("k" * 40)  # one installation: every replica verifies the others' ledger copies
    started: list[Replica] = []

    def start(name: str) -> Replica:
        started.append(Replica(name, remote, tmp_path, kube_control_plane, kube_namespace, key))
        return started[-1]

    try:
        yield start
    finally:
        for replica in started:  # by PID, pass or fail
            replica.stop(signal.SIGKILL, timeout=30)


def values(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    """Environment -> the `value` its ConfigMap holds on the cluster."""
    items = core.list_namespaced_config_map(namespace, label_selector="gitops.ray.io/environment").items
    return {c.metadata.name.removeprefix("settings-"): (c.data or {}).get("value", "")
            for c in items if c.metadata.name.startswith("settings-")}


def wait(what: str, check: Callable[[], bool], replicas: list[Replica], timeout: float) -> float:
    """Poll `check` every 0.25 s; the seconds it took. Fails with the replicas' log tails."""
    started = time.monotonic()
    eventually(check, timeout, 0.25, lambda: what + "".join(f"\n--- {r.name} ---\n{r.log.read_text()[-3000:]}"
                                                             for r in replicas))
    return time.monotonic() - started


def test_three_replicas_apply_each_environment_once_and_take_over_a_killed_ones_within_20s(
        remote: GitRemote, replicas: Callable[[str], Replica], kube_control_plane: kube_controlplane.ControlPlane,
        kube_namespace: str) -> None:
    core = client.CoreV1Api(kube_control_plane.api_client())
    first = write_revision(remote, kube_namespace, "one")
    group = [replicas(name) for name in ("a", "b", "c")]

    synced = wait("every environment applied", lambda: values(core, kube_namespace) == dict.fromkeys(
        ENVIRONMENTS, "one"), group, timeout=300)
    wait("three shards each", lambda: [len(r.owned()) for r in group] == [3, 3, 3], group, timeout=60)
    wait("every write in a ledger", lambda: sum(len(r.writes(first)) for r in group) >= N, group, timeout=60)
    writers = Counter(env for r in group for env in r.writes(first))
    assert writers == Counter(ENVIRONMENTS), f"not one writer per environment: {writers.most_common(3)}"
    owned = {r.name: r.owned() for r in group}
    assert sorted(n for shards in owned.values() for n in shards) == list(range(SHARDS)), owned

    a, b, c = group
    env = next(e for e in ENVIRONMENTS if shard_of(e, SHARDS) in owned["b"])
    status, doc = a.api("environments")
    assert status == 200 and doc["shards"]["holders"][str(shard_of(env, SHARDS))] == b.identity
    assert {row["owner"]["replica"] for row in doc["environments"] if row["owner"]["here"]} <= {a.identity}
    status, doc = a.api(f"environments/{env}")
    assert status == 404 and b.identity in doc["error"]
    status, doc = b.api(f"environments/{env}")
    assert status == 200 and doc["owner"] == {"shard": shard_of(env, SHARDS), "replica": b.identity, "here": True}
    assert b.metric("ray_gitops_environments_owned", identity=b.identity) == sum(
        shard_of(e, SHARDS) in owned["b"] for e in ENVIRONMENTS)

    orphans = [e for e in ENVIRONMENTS if shard_of(e, SHARDS) in owned["c"]]
    c.stop(signal.SIGKILL)
    killed = time.monotonic()
    second = write_revision(remote, kube_namespace, "two")
    taken = wait("c's shards held by a and b", lambda: a.owned() | b.owned() == set(range(SHARDS)), [a, b],
                 timeout=TAKEOVER_BOUND)
    wait("c's environments applied by the others", lambda: all(
        v == "two" for e, v in values(core, kube_namespace).items() if e in orphans), [a, b],
         timeout=TAKEOVER_BOUND - (time.monotonic() - killed))
    applied = time.monotonic() - killed
    wait("every environment at the second revision", lambda: values(core, kube_namespace) == dict.fromkeys(
        ENVIRONMENTS, "two"), [a, b], timeout=120)
    wait("every write in a ledger", lambda: len(a.writes(second)) + len(b.writes(second)) >= N, [a, b], timeout=60)
    writers = Counter(env for r in (a, b) for env in r.writes(second))
    print(f"{N} environments, {SHARDS} shards: first sync {synced:.1f}s; after kill -9 of c ({len(orphans)} "
          f"environments): its shards held by the others after {taken:.1f}s, its environments applied at the new "
          f"revision after {applied:.1f}s (lease {LEASE:g}s, retry {RETRY:g}s)")
    assert writers == Counter(ENVIRONMENTS), f"not one writer per environment: {writers.most_common(3)}"
    assert not c.writes(second)
    assert len(a.owned()) + len(b.owned()) == SHARDS and a.owned().isdisjoint(b.owned())

    d = replicas("d")
    joined = wait("d takes its share", lambda: len(d.owned()) == 3 and sorted(
        [*a.owned(), *b.owned(), *d.owned()]) == list(range(SHARDS)), [a, b, d], timeout=60)
    third = write_revision(remote, kube_namespace, "three")
    wait("every environment at the third revision", lambda: values(core, kube_namespace) == dict.fromkeys(
        ENVIRONMENTS, "three"), [a, b, d], timeout=120)
    wait("every write in a ledger", lambda: sum(len(r.writes(third)) for r in (a, b, d)) >= N, [a, b, d], timeout=60)
    writers = Counter(env for r in (a, b, d) for env in r.writes(third))
    assert writers == Counter(ENVIRONMENTS), f"not one writer per environment: {writers.most_common(3)}"
    assert d.writes(third) == {e for e in ENVIRONMENTS if shard_of(e, SHARDS) in d.owned()}
    assert a.proc.poll() is None and b.proc.poll() is None
    print(f"a fourth replica held its 3 shards {joined:.1f}s after it started")
