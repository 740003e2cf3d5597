"""A local cluster is closed (real Ray, no mocks): every socket its processes listen on is on loopback,
and every port that takes work refuses a request without the cluster's token.

One cluster (a head, one worker node, a job whose driver ran a task) is listed through /proc: the
nodes' sessions and the job driver's marked environment give the processes, their socket inodes give
the listening sockets. Each port is then asked something without the token, with a wrong token and,
for one HTTP and one gRPC port, with the right one, so the refusals are shown to come from the token.
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from reconciler.targets.local.nodes import MARKER_ENV, NodeSpec
from reconciler.targets.local.runtime import LocalRayCluster
from tests.eventually import eventually
from tests.sockets import Listener, listeners, processes

pytestmark = pytest.mark.ray

DRIVER = ('python -c "import os, ray, time; ray.init(); print(\'task says\', ray.get(ray.remote(lambda: 42).remote()), '
          '\'daemon settings seen:\', '
          'sorted(k for k in os.environ if k in (\'RAY_GITOPS_WEBHOOK_SECRET\', \'KUBECONFIG\')), '
          'flush=True); time.sleep(300)" closed-driver')
SECRETS = {"RAY_GITOPS_WEBHOOK_SECRET": "the-daemons-webhook-secret", "KUBECONFIG": "/etc/the-daemons/kubeconfig"}
# One cheap call per gRPC service; an empty request is a valid protobuf message.
GRPC_PROBES = {
    "port": "/ray.rpc.NodeInfoGcsService/CheckAlive",  # GCS
    "node-manager-port": "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet
    "object-manager-port": "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager
    "dashboard-agent-grpc-port": "/ray.rpc.ReporterService/GetTraceback",
    "ray-client-server-port": "/ray.rpc.RayletDriver/ClusterInfo",
    "worker": "/ray.rpc.CoreWorkerService/NumPendingTasks",  # Ray workers, drivers and agents' core workers
}
HTTP_PROBES = {  # (method, path): handlers behind Ray's token middleware
    "dashboard-port": ("POST", "/api/jobs/"),
    "dashboard-agent-listen-port": ("POST", "/api/job_agent/jobs/"),
    "runtime-env-agent-port": ("POST", "/get_or_create_runtime_env"),
}
METRICS = ("metrics-export-port", "DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")  # Prometheus text, read-only


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("closed-state")


@pytest.fixture(scope="module")
def cluster(state_dir: Path) -> Iterator[LocalRayCluster]:
    """Head + one worker node, and a job whose driver connected with ray.init() and ran a task; started by a process
    that holds daemon settings and a secret in its environment (SECRETS)."""
    saved = {key: os.environ.get(key) for key in SECRETS}
    os.environ.update(SECRETS)
    try:
        cluster = LocalRayCluster.start("closed", NodeSpec("head", num_cpus=1), state_dir)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        cluster.add_worker(NodeSpec("cpu", num_cpus=1))
        assert cluster.dashboard.submit_job("driver", DRIVER)

        def logs() -> str:
            resp = requests.get(f"{cluster.dashboard_url}/api/jobs/driver/logs", headers=cluster.auth_headers,
                                timeout=10)
            return resp.json()["logs"] if resp.ok else ""
        eventually(lambda: "task says 42" in logs() or cluster.dashboard.job_info("driver")["status"] == "FAILED",
                   90, 0.5, "the job's task")
        assert "task says 42 daemon settings seen: []" in logs(), (cluster.dashboard.job_info("driver"), logs())
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def record(cluster: LocalRayCluster, state_dir: Path) -> dict:
    return json.loads((state_dir / "closed" / "cluster.json").read_text())


@pytest.fixture(scope="module")
def sockets(cluster: LocalRayCluster, record: dict) -> list[Listener]:
    nodes = {record["head"]["pid"], *(w["pid"] for w in record["workers"])}
    pids = processes(nodes, f"{MARKER_ENV}={record['token']}.".encode())
    assert nodes <= pids
    return listeners(pids)


def service(port: int, record: dict) -> str:
    """What listens on `port`: a `ray start` port name, or "worker" (a port of a node's worker range)."""
    for node in (record["head"], *record["workers"]):
        ports = node["ports"]
        names = [name for name, value in ports.items() if value == port and "worker-port" not in name]
        if names:
            return names[0]
        if ports["min-worker-port"] <= port <= ports["max-worker-port"]:
            return "worker"
    return "unknown"


def grpc_code(host: str, port: int, method: str, token: str | None) -> grpc.StatusCode:
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", timeout=10, metadata=[("authorization", f"Bearer {token}")] if token else None)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


def http(host: str, port: int, method: str, path: str, token: str | None = None) -> requests.Response:
    session = requests.Session()
    session.trust_env = False  # this machine: never through a proxy
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return session.request(method, f"http://{host}:{port}{path}", headers=headers, json={}, timeout=10)


def test_the_listing_sees_the_cluster(sockets: list[Listener], record: dict) -> None:
    """The listing is complete enough to judge: the head's GCS, dashboard and raylets of both nodes, and
    ports of Ray's workers (the job's driver and task), each listed by its own process."""
    seen = {service(s.port, record) for s in sockets}
    assert {"port", "dashboard-port", "node-manager-port", "object-manager-port", "worker"} <= seen, sockets
    by_port = {s.port: s.process for s in sockets}
    assert by_port[record["head"]["ports"]["port"]] == "gcs_server"
    assert by_port[record["workers"][0]["ports"]["node-manager-port"]] == "raylet"


def test_every_listening_socket_is_on_loopback(sockets: list[Listener]) -> None:
    assert [str(s) for s in sockets if not s.loopback] == []


def test_every_port_that_takes_work_refuses_a_request_without_the_token(
        sockets: list[Listener], record: dict, cluster: LocalRayCluster) -> None:
    refused, unknown = [], []
    for s in sockets:
        name = service(s.port, record)
        if name in GRPC_PROBES:
            codes = {grpc_code(s.reach, s.port, GRPC_PROBES[name], token) for token in (None, "not-the-token")}
            assert codes == {grpc.StatusCode.UNAUTHENTICATED}, f"{s} ({name}) answered {codes}"
        elif name in HTTP_PROBES:
            method, path = HTTP_PROBES[name]
            codes = {token: http(s.reach, s.port, method, path, token).status_code for token in (None, "not-the-token")}
            assert codes == {None: 401, "not-the-token": 403}, f"{s} ({name}) answered {codes}"
        elif name in METRICS:
            resp = http(s.reach, s.port, "GET", "/metrics")
            assert resp.ok and resp.text.startswith("# HELP"), f"{s} ({name}) is not a metrics exporter"
            continue
        else:
            unknown.append(f"{s} ({name})")
            continue
        refused.append(name)
    assert unknown == []
    assert {"port", "dashboard-port", "node-manager-port", "worker"} <= set(refused)


def test_the_right_token_is_accepted(cluster: LocalRayCluster, record: dict) -> None:
    """The refusals above come from the token: the same requests with the cluster's token pass."""
    token = cluster.auth_headers["Authorization"].removeprefix("Bearer ")
    head = record["head"]["ports"]
    assert grpc_code("127.0.0.1", head["port"], GRPC_PROBES["port"], token) == grpc.StatusCode.OK
    assert http("127.0.0.1", head["dashboard-port"], "GET", "/api/jobs/", token).status_code == 200


def test_the_token_is_kept_in_a_private_file_and_never_in_the_record(
        cluster: LocalRayCluster, record: dict, state_dir: Path) -> None:
    token_file = state_dir / "closed" / "auth_token"
    assert cluster.token_file == token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert token not in json.dumps(record)
    environ = Path(f"/proc/{record['head']['pid']}/environ").read_bytes().split(b"\0")
    assert b"RAY_AUTH_MODE=token" in environ and f"RAY_AUTH_TOKEN_PATH={token_file}".encode() in environ
    assert not any(token.encode() in v for v in environ)
    assert not any(value.encode() in v for v in environ for value in SECRETS.values())  # a scrubbed environment
    assert stat.S_IMODE(os.stat(record["temp_dir"]).st_mode) == 0o700  # Ray's own temp dir is world-writable


def test_stop_removes_the_token(state_dir: Path, cluster: LocalRayCluster) -> None:
    cluster.stop()
    assert not (state_dir / "closed" / "auth_token").exists()
