"""RayService on the local target, through the reconcile stage, on real Ray (Serve) and real Git.

One RayService, `greeter`, lives through the module's tests in order: deployed from Git on a local cluster and
answering on its loopback address; a `serveConfigV2` change applied in place (same cluster, a new answer); its
address back on its port after a restart of the daemon; a cluster change under `upgradeStrategy: NewCluster`,
polled all along: the old cluster answers until the new one's applications run, not one request fails, then the
old cluster stops. Apart, on a RayService of its own: a cluster change under `upgradeStrategy: None` keeps the
cluster and stays reported as pending restart. The Serve application is a tiny deployment in the test's Git
repository, loaded through `import_path` from a `working_dir` exported from the
revision; it answers with its greeting (Serve's `user_config`) and its cluster's GCS address.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests

from reconciler.model import Outcome
from reconciler.pipeline.reconcile import Result
from reconciler.targets.local.nodes import MARKER_ENV
from reconciler.targets.local.target import LocalTarget
from tests.conftest import GitRemote
from tests.eventually import eventually
from tests.localharness import LocalHarness
from tests.memory import pipeline
from tests.sockets import listeners, processes

pytestmark = pytest.mark.ray
ENV = "s"
APP = """\
import ray
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Greeter:
    def __init__(self):
        self.greeting = "hello"

    def reconfigure(self, config):
        self.greeting = config["greeting"]

    def __call__(self, request):
        return f"{self.greeting} from {ray.get_runtime_context().gcs_address}"


app = Greeter.bind()
"""
SERVICE = """\
apiVersion: ray.io/v1
kind: RayService
metadata: {name: greeter}
spec:
  rayClusterDeletionDelaySeconds: 2
  serveConfigV2: |
    applications:
    - name: greeter
      route_prefix: /
      import_path: greeter:app
      runtime_env: {working_dir: services/greeter}
      deployments:
      - name: Greeter
        user_config: {greeting: GREETING}
  rayClusterConfig:
    headGroupSpec:
      rayStartParams: {num-cpus: "CPUS"}
      template: {spec: {containers: [{name: ray-head, image: rayproject/ray:2.60.0}]}}
"""


def service(greeting: str, cpus: int = 1) -> str:
    return SERVICE.replace("GREETING", greeting).replace("CPUS", str(cpus))


class Harness(LocalHarness):
    """Environment `s` (the RayService) on the local target, reconciled at once with two neighbours."""

    def __init__(self, remote: GitRemote, state: Path) -> None:
        super().__init__(remote, state, ENV)
        remote.write(f"environments/{ENV}/environment.yaml", "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
                     f"metadata: {{name: {ENV}}}\nspec: {{target: {{local: {{}}}}, interval: 2s}}\n")
        remote.write("services/greeter/greeter.py", APP)

    def until(self, what: str, check: Callable[[Result], bool], timeout: float = 150) -> Result:
        return super().until(what, check, timeout)

    @property
    def record(self) -> dict:
        return json.loads((self.state / "local" / "objects" / ENV / "RayService.default.greeter.json").read_text())

    @property
    def detail(self) -> dict:
        return self.reconciler.ledger.state(ENV).detail["services"]["greeter"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("serve")
    h = Harness(GitRemote(root), root / "state")
    yield h
    h.close()


def ask(url: str) -> str:
    session = requests.Session()
    session.trust_env = False  # this machine: never through a proxy
    resp = session.get(url, timeout=10)
    resp.raise_for_status()
    return resp.text


def grpc_code(port: int, token: str | None) -> grpc.StatusCode:
    """What a Serve replica's gRPC server on 127.0.0.1:`port` answers to an empty request (a valid message)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest", request_serializer=bytes,
                                   response_deserializer=bytes)
        try:
            call(b"", timeout=10, metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_serve_application_deployed_from_git_answers_on_loopback(harness: Harness) -> None:
    """Also: every socket of the cluster listens on 127.0.0.1, Serve's HTTP proxy and a replica's gRPC server
    (Ray opens that one on every interface; `preload/` keeps it on loopback) too, and the replica's refuses a call
    without the cluster's token; the RayService's address (in this process) is on 127.0.0.1."""
    harness.remote.write(f"environments/{ENV}/service.yaml", service("hello"))
    harness.remote.commit("a RayService")

    [(item, outcome)] = harness.reconcile().outcomes
    assert outcome == Outcome.CREATED
    harness.until("the application to run", lambda r: r.health_status == "Healthy")

    detail, active = harness.detail, harness.record["active"]
    cluster = harness.cluster(active["cluster"])
    assert cluster is not None and detail["activeCluster"] == active["cluster"]
    assert detail["applications"] == {"greeter": "RUNNING"}
    assert detail["url"] == f"http://127.0.0.1:{harness.record['port']}"
    assert ask(detail["url"]) == f"hello from {cluster.gcs_address}"
    assert harness.metrics.registry.get_sample_value("ray_gitops_rayservice_application_status", {
        "environment": ENV, "service": "greeter", "application": "greeter", "status": "RUNNING"}) == 1

    record = json.loads((harness.state / "local" / "clusters" / active["cluster"] / "cluster.json").read_text())
    sockets = listeners(processes({record["head"]["pid"]}, f"{MARKER_ENV}={record['token']}.".encode()))
    assert [str(s) for s in sockets if not s.loopback] == []
    assert [s.host for s in sockets if s.port == active["port"]] == ["127.0.0.1"]  # Serve's HTTP proxy
    assert [s.host for s in listeners([os.getpid()]) if s.port == harness.record["port"]] == ["127.0.0.1"]  # address
    workers = range(record["head"]["ports"]["min-worker-port"], record["head"]["ports"]["max-worker-port"] + 1)
    [replica] = [s for s in sockets if s.process.startswith("ray::ServeRepli") and s.port not in workers]
    token = cluster.auth_headers["Authorization"].removeprefix("Bearer ")
    codes = [grpc_code(replica.port, t) for t in (None, "not-the-token", token)]
    assert codes[:2] == [grpc.StatusCode.UNAUTHENTICATED] * 2 and codes[2] != grpc.StatusCode.UNAUTHENTICATED, codes
    assert harness.reconcile().outcomes == []  # in sync: nothing to redeploy


def test_a_serve_config_change_is_applied_in_place(harness: Harness) -> None:
    before = harness.record["active"]
    head = json.loads((harness.state / "local" / "clusters" / before["cluster"] / "cluster.json").read_text())["head"]
    cluster = harness.cluster(before["cluster"])
    assert cluster is not None
    harness.remote.write(f"environments/{ENV}/service.yaml", service("bonjour"))
    harness.remote.commit("a new greeting")

    [(item, outcome)] = harness.reconcile().outcomes
    assert (outcome, item.changes) == (Outcome.CONFIGURED, ("spec.serveConfigV2",))
    def greets() -> bool:
        answer = ask(harness.detail["url"])
        assert answer == f"bonjour from {cluster.gcs_address}", answer
        return True
    eventually(greets, 60, 0.5, "the new greeting")

    after = harness.record
    assert after["active"]["cluster"] == before["cluster"] and "pending" not in after
    assert json.loads((harness.state / "local" / "clusters" / before["cluster"] / "cluster.json").read_text())[
        "head"]["pid"] == head["pid"]


def test_after_a_restart_of_the_daemon_the_address_is_back_on_its_port_and_nothing_is_redeployed(
        harness: Harness) -> None:
    """As after `kill -9`: the address lived in the daemon's process, the cluster runs on. A new target on the same
    state dir opens the address again at its recorded port in its control step, and changes nothing."""
    url, active = harness.detail["url"], harness.record["active"]
    harness.target.endpoints.close_all()
    with pytest.raises(requests.ConnectionError):
        ask(url)
    harness.target = LocalTarget(harness.state)
    harness.reconciler = pipeline(harness.source, harness.state, harness.target, harness.metrics)

    assert harness.reconcile().outcomes == []
    assert harness.detail["url"] == url and harness.record["active"] == active
    assert ask(url).startswith("bonjour from ")


def test_a_cluster_change_moves_to_a_new_cluster_without_a_failed_request(harness: Harness) -> None:
    """NewCluster: the old cluster answers until every application runs on the new one, then the address routes
    to the new one, and the old one stops after its deletion delay. A client polls all along."""
    old = harness.record["active"]["cluster"]
    old_cluster, url = harness.cluster(old), harness.detail["url"]
    assert old_cluster is not None
    answers: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                answers.append(ask(url))
            except requests.RequestException as exc:
                failures.append(str(exc))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        harness.remote.write(f"environments/{ENV}/service.yaml", service("hi", cpus=2))
        harness.remote.commit("a bigger head, and a new greeting")
        upgrading = harness.reconcile()
        [(item, outcome)] = upgrading.outcomes
        assert outcome == Outcome.CONFIGURED and "new cluster" in item.reason
        assert upgrading.health_status == "Progressing"
        pending = harness.record["pending"]["cluster"]
        harness.until("the switch and the old cluster stopped",
                      lambda r: r.health_status == "Healthy" and harness.cluster(old) is None)
    finally:
        stop.set()
        poller.join(15)

    new = harness.cluster(pending)
    assert new is not None and harness.record["active"]["cluster"] == pending and "pending" not in harness.record
    assert failures == []
    switched = answers.index(f"hi from {new.gcs_address}")
    assert set(answers[:switched]) == {f"bonjour from {old_cluster.gcs_address}"} and switched > 0
    assert set(answers[switched:]) == {f"hi from {new.gcs_address}"}
    assert harness.detail["activeCluster"] == pending and harness.record.get("retiring") == []


def test_a_cluster_change_under_upgrade_strategy_none_keeps_the_cluster_and_stays_pending_restart(
        tmp_path: Path) -> None:
    """None: no new cluster starts; the same head (same PID) goes on serving the application, and the RayService
    is reported pending restart after the reconcile that applied the change, while the next plans are in sync."""
    h = Harness(GitRemote(tmp_path), tmp_path / "state")
    try:
        def never_upgraded(text: str) -> str:
            return text.replace("spec:\n", "spec:\n  upgradeStrategy: {type: None}\n", 1)

        h.remote.write(f"environments/{ENV}/service.yaml", never_upgraded(service("hello")))
        h.remote.commit("a RayService that is never moved to a new cluster")
        h.until("the application to run", lambda r: r.health_status == "Healthy")
        active = h.record["active"]["cluster"]
        cluster = h.cluster(active)
        assert cluster is not None
        head = json.loads((h.state / "local" / "clusters" / active / "cluster.json").read_text())["head"]["pid"]

        h.remote.write(f"environments/{ENV}/service.yaml", never_upgraded(service("hello", cpus=2)))
        h.remote.commit("a bigger head")
        [(item, outcome)] = h.reconcile().outcomes
        assert outcome == Outcome.CONFIGURED and "pending restart" in item.reason, item.reason
        assert h.reconcile().outcomes == []  # the next plan is in sync ...
        assert list(h.detail.get("pendingRestart") or {}) == ["headgroup"], h.detail  # ... and it stays pending

        assert h.record["active"]["cluster"] == active and "pending" not in h.record
        assert json.loads((h.state / "local" / "clusters" / active / "cluster.json").read_text())["head"][
            "pid"] == head
        assert ask(h.detail["url"]) == f"hello from {cluster.gcs_address}"
    finally:
        h.close()
