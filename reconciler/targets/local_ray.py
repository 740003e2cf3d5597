"""Apply stage, embedded "local" target: starts, tracks, scales and stops real local Ray clusters, one
`ray start --block` process (own session, own ports, cluster-private temp dir) per node. Called only by
reconciler.targets.local. It must never run `ray stop` nor signal a process it did not start, so a
user's own Ray and other local clusters on the same host keep running. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

GROUP_LABEL = "ray-gitops.io/group"  # Ray node label: the worker group ("head" for the head)
NODE_LABEL = "ray-gitops.io/node"  # Ray node label: our per-node token
MARKER_ENV = "RAY_GITOPS_NODE"  # "<cluster token>.<node token>", inherited by a node's processes
DEFAULT_OBJECT_STORE_BYTES = 128 * 1024**2
WORKER_PORTS = 64  # ports per node for Ray's worker and driver processes
PORT_RANGE = (20000, 32000)  # above Ray's defaults (6379, 8265, 10001-19999), below Linux ephemeral
HTTP_TIMEOUT = 15.0  # the head itself waits up to 10 s for its job agent before answering
_NODE_PORT_FLAGS = ("node-manager-port", "object-manager-port", "metrics-export-port",
                    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
_HEAD_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port")
_HEAD_PORT_ENVS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")  # Ray has no flags for these
_MANAGED_FLAGS = frozenset({
    *_NODE_PORT_FLAGS, *_HEAD_PORT_FLAGS, "min-worker-port", "max-worker-port", "worker-port-list",
    "head", "address", "block", "node-ip-address", "temp-dir", "labels", "labels-file", "resources",
    "num-cpus", "num-gpus", "memory", "object-store-memory", "include-dashboard", "dashboard-host",
    "include-log-monitor", "disable-usage-stats"})
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


class LocalRayError(RuntimeError):
    """A local Ray node or cluster operation failed; the message names cluster and node."""


@dataclass(frozen=True)
class NodeSpec:
    group: str  # worker group name; the head uses group "head"
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None  # bytes
    object_store_memory: int | None = None  # bytes; DEFAULT_OBJECT_STORE_BYTES when None
    resources: dict[str, float] = field(default_factory=dict)  # custom resources
    extra_args: tuple[str, ...] = ()  # more `--flag`/`--flag=value` args; managed flags are refused

    def __post_init__(self) -> None:
        if not _LABEL_VALUE.fullmatch(self.group):
            raise ValueError(f"group {self.group!r} is not a valid Ray label value")
        for what, value in [("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus),
                            *self.resources.items()]:
            if value is not None and (value < 0 or not float(value).is_integer()):
                raise ValueError(f"{what}={value}: Ray node resources must be whole numbers >= 0")
        for arg in self.extra_args:
            if not arg.startswith("--") or arg[2:].split("=", 1)[0] in _MANAGED_FLAGS:
                raise ValueError(f"ray start argument {arg!r} refused: managed here, or not --flag[=value]")


@dataclass(frozen=True)
class _Node:
    group: str
    token: str
    pid: int  # of `ray start --block`, leader of the node's own session and process group
    start_ticks: int  # from /proc: guards against PID reuse
    log: str
    ports: dict[str, int]  # lower-case keys are `ray start` flags, upper-case ones environment variables


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state, ppid, pgrp, session, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot; None if the process is gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in "ZX" else int(fields[19])


def _sweep(marker_prefix: str, session: int | None = None, timeout: float = 10) -> None:
    """SIGKILL every live process whose MARKER_ENV starts with marker_prefix (this catches job drivers,
    which Ray starts in new sessions) or that is in `session`, and wait until they are gone. Pass the
    session of a verified live node only: Linux reuses no pid while its session has members, but a
    dead node's pid may lead someone else's session by now. Processes that write their title over
    their environment (ray::DashboardAgent, ...) lose the marker; they die with their raylet."""
    wanted = f"{MARKER_ENV}={marker_prefix}".encode()
    killed = []
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            if fields and fields[0] not in "ZX" and (int(fields[3]) == session or any(
                    v.startswith(wanted) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))):
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, int(fields[19])))
    deadline = time.monotonic() + timeout
    while any(_start_ticks(pid) == ticks for pid, ticks in killed) and time.monotonic() < deadline:
        time.sleep(0.1)


_port_lock = threading.Lock()
_recent_ports: dict[int, float] = {}  # handed out by this process -> when; not re-offered for 5 min


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # Ray binds several ports on all interfaces
        except OSError:
            return False
        return True


def _reserve(count: int) -> int:
    """First of `count` consecutive ports that are free now and were not handed out recently."""
    with _port_lock:
        now = time.monotonic()
        for port in [p for p, t in _recent_ports.items() if now - t > 300]:
            del _recent_ports[port]
        for _ in range(500):
            block = range(base := random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count), base + count)
            if all(p not in _recent_ports and _bindable(p) for p in block):
                _recent_ports.update(dict.fromkeys(block, now))
                return base
    raise LocalRayError(f"no block of {count} free ports found in {PORT_RANGE}")


def _allocate_ports(is_head: bool) -> dict[str, int]:
    names = _NODE_PORT_FLAGS + (_HEAD_PORT_FLAGS + _HEAD_PORT_ENVS if is_head else ())
    ports = {name: _reserve(1) for name in names}
    ports["min-worker-port"] = _reserve(WORKER_PORTS)
    ports["max-worker-port"] = ports["min-worker-port"] + WORKER_PORTS - 1
    return ports


def _command(spec: NodeSpec, token: str, temp_dir: str, ports: dict[str, int], gcs: str | None) -> list[str]:
    args = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
            "--disable-usage-stats", f"--temp-dir={temp_dir}",
            f"--labels={GROUP_LABEL}={spec.group},{NODE_LABEL}={token}",
            f"--object-store-memory={spec.object_store_memory or DEFAULT_OBJECT_STORE_BYTES}",
            f"--resources={json.dumps(spec.resources)}"]
    for flag, value in (("num-cpus", spec.num_cpus), ("num-gpus", spec.num_gpus), ("memory", spec.memory)):
        if value is not None:
            args.append(f"--{flag}={int(value)}")
    args += [f"--{name}={port}" for name, port in ports.items() if name.islower()]
    if gcs is None:
        args += ["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    else:  # every node shares the head's session dir, whose log monitor already tails all logs
        args += [f"--address={gcs}", "--include-log-monitor=false"]
    return args + list(spec.extra_args)


class LocalRayCluster:
    """One local Ray cluster. Safe to call from several threads, except stop() while another thread
    is still adding a worker."""

    def __init__(self, name: str, cluster_dir: Path, token: str, temp_dir: str) -> None:
        self.name = name
        self.temp_dir = temp_dir  # Ray's --temp-dir for every node (Ray's own logs are in there)
        self._dir = cluster_dir
        self._token = token
        self._head: _Node | None = None
        self._workers: list[_Node] = []
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self._head_node().ports['dashboard-port']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self._head_node().ports['port']}"

    @classmethod
    def start(cls, name: str, head: NodeSpec, state_dir: Path, *, timeout: float = 120) -> LocalRayCluster:
        """Start the head; return once the Jobs API really accepts submissions."""
        if head.group != "head":
            raise ValueError(f"the head NodeSpec must use group 'head', not {head.group!r}")
        if cls.adopt(name, state_dir) is not None:
            raise LocalRayError(f"local Ray cluster {name!r} is already running: adopt() it")
        token = secrets.token_hex(4)
        self = cls(name, Path(state_dir) / name, token, f"/tmp/rgo-{token}")  # Unix sockets: < 107 chars
        shutil.rmtree(self._dir / "logs", ignore_errors=True)
        try:
            node = self._launch(head, is_head=True)
            self._wait(node, timeout, self._jobs_api_ready, "the Jobs API to accept submissions")
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    def adopt(cls, name: str, state_dir: Path) -> LocalRayCluster | None:
        """Re-attach from the record; None, after cleaning up its leftovers, if the head is gone."""
        path = Path(state_dir) / name / "cluster.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        self = cls(name, path.parent, record["token"], record["temp_dir"])
        self._head = _Node(**record["head"])
        self._workers = [_Node(**w) for w in record["workers"]]
        if not self._alive(self._head):
            self.stop()
            return None
        self.worker_pids()  # forgets dead workers and persists that
        return self

    def add_worker(self, spec: NodeSpec, *, timeout: float = 120) -> None:
        """Start one worker node of spec.group; return when Ray reports it ALIVE."""
        if spec.group == "head":
            raise ValueError("workers cannot use group 'head'")
        node = self._launch(spec, is_head=False)
        try:
            self._wait(node, timeout, lambda: any(n["labels"].get(NODE_LABEL) == node.token
                                                  for n in self._ray_nodes(quiet=True)),
                       "Ray to report it ALIVE")
        except BaseException:
            self._forget(node)
            self._terminate([node], time.monotonic() + 10)
            raise

    def remove_worker(self, group: str, timeout: float = 30) -> bool:
        """Stop the most recently started live worker of the group; False if there is none."""
        self.worker_pids()
        with self._lock:
            node = next((w for w in reversed(self._workers) if w.group == group), None)
            if node is None:
                return False
            self._forget(node)
        self._terminate([node], time.monotonic() + timeout)
        return True

    def worker_pids(self) -> dict[str, list[int]]:
        """group -> pids of the worker nodes we track, after forgetting (and sweeping) dead ones."""
        with self._lock:
            dead = [w for w in self._workers if not self._alive(w)]
            for node in dead:
                self._forget(node)
            pids = defaultdict(list)
            for w in self._workers:
                pids[w.group].append(w.pid)
        self._terminate(dead, time.monotonic())
        return dict(pids)

    def alive_nodes(self) -> dict[str, int]:
        """group -> number of ALIVE nodes as reported by Ray (the head counts as group "head")."""
        return dict(Counter(n["labels"].get(GROUP_LABEL, "") for n in self._ray_nodes()))

    def node_resources(self) -> dict[str, dict[str, float]]:
        """group -> summed resources_total (CPU, GPU, memory, object_store_memory, custom) of ALIVE nodes."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for node in self._ray_nodes():
            for resource, amount in node["resources_total"].items():
                if not resource.startswith("node:"):
                    totals[node["labels"].get(GROUP_LABEL, "")][resource] += amount
        return {group: dict(resources) for group, resources in totals.items()}

    def submit_job(self, submission_id: str, entrypoint: str, *, runtime_env: dict | None = None,
                   metadata: dict | None = None, entrypoint_num_cpus: float | None = None,
                   entrypoint_num_gpus: float | None = None,
                   entrypoint_resources: dict[str, float] | None = None) -> bool:
        """Submit unless a job with this id exists; True only if newly submitted. Goes through Ray's SDK,
        which uploads a local `working_dir`/`py_modules` as a package first (the REST API cannot)."""
        from ray.job_submission import JobSubmissionClient  # heavy import, only when submitting

        if self.job_info(submission_id) is not None:
            return False
        try:
            JobSubmissionClient(self.dashboard_url).submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                entrypoint_resources=entrypoint_resources)
        except (RuntimeError, ConnectionError, OSError) as exc:
            if "Please use a different submission_id" in str(exc):
                return False
            raise LocalRayError(f"cluster {self.name}: submitting job {submission_id!r} failed: {exc}") from exc
        return True

    def job_info(self, submission_id: str) -> dict | None:
        """Ray's JobDetails (status, start_time/end_time in Unix ms, message, error_type...); None on 404."""
        resp = requests.get(f"{self.dashboard_url}/api/jobs/{submission_id}", timeout=HTTP_TIMEOUT)
        return None if resp.status_code == 404 else self._check(resp, f"reading job {submission_id!r}").json()

    def stop_job(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; True if it was still running."""
        resp = requests.post(f"{self.dashboard_url}/api/jobs/{submission_id}/stop", timeout=HTTP_TIMEOUT)
        if resp.status_code == 404:
            return False
        return self._check(resp, f"stopping job {submission_id!r}").json()["stopped"]

    def stop(self, timeout: float = 30) -> None:
        """Stop every node we started (workers first, head last); delete the record and the temp dir."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers, self._workers = self._workers, []
        self._terminate(workers, deadline - timeout / 2)
        if self._head is not None:
            self._terminate([self._head], deadline)
        _sweep(f"{self._token}.")
        (self._dir / "cluster.json").unlink(missing_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _head_node(self) -> _Node:
        if self._head is None:
            raise LocalRayError(f"local Ray cluster {self.name!r} has no head node")
        return self._head

    def _launch(self, spec: NodeSpec, is_head: bool) -> _Node:
        token = secrets.token_hex(3)
        ports = _allocate_ports(is_head)
        log = self._dir / "logs" / f"{spec.group}-{token}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({k: str(v) for k, v in ports.items() if k.isupper()})
        env.update({"PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", MARKER_ENV: f"{self._token}.{token}"})
        cmd = _command(spec, token, self.temp_dir, ports, None if is_head else self.gcs_address)
        with open(log, "ab") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, cwd=self._dir, start_new_session=True)
        node = _Node(spec.group, token, popen.pid, _start_ticks(popen.pid) or 0, str(log), ports)
        with self._lock:
            self._popens[popen.pid] = popen
            if is_head:
                self._head = node
            else:
                self._workers.append(node)
            self._save()
        return node

    def _forget(self, node: _Node) -> None:
        with self._lock:
            self._workers = [w for w in self._workers if w != node]
            self._save()

    def _save(self) -> None:
        record = {"name": self.name, "token": self._token, "temp_dir": self.temp_dir,
                  "dashboard_url": self.dashboard_url, "gcs_address": self.gcs_address,
                  "head": asdict(self._head_node()), "workers": [asdict(w) for w in self._workers]}
        tmp = self._dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self._dir / "cluster.json")

    def _alive(self, node: _Node) -> bool:
        if (popen := self._popens.get(node.pid)) is not None:
            return popen.poll() is None  # also reaps it
        return _start_ticks(node.pid) == node.start_ticks

    def _terminate(self, nodes: list[_Node], deadline: float) -> None:
        """SIGTERM each live node's process group, wait until the deadline, then SIGKILL what is left."""
        live = [n for n in nodes if self._alive(n)]
        for node in live:
            with contextlib.suppress(OSError):
                os.killpg(node.pid, signal.SIGTERM)
        while any(self._alive(n) for n in live) and time.monotonic() < deadline:
            time.sleep(0.2)
        for node in nodes:  # a live node's session also holds Ray workers, in process groups of their own
            _sweep(f"{self._token}.{node.token}", node.pid if node in live else None)
            if (popen := self._popens.pop(node.pid, None)) is not None:
                popen.wait(5)

    def _wait(self, node: _Node, timeout: float, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self._alive(node):
                raise self._error(node, f"exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise self._error(node, f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def _error(self, node: _Node, message: str) -> LocalRayError:
        with contextlib.suppress(OSError), open(node.log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4000))
            tail = f.read().decode(errors="replace").splitlines()[-25:]
            message += f". Last lines of {node.log}:\n" + "\n".join(tail)
        return LocalRayError(f"local Ray cluster {self.name!r}, node {node.group}/{node.token} "
                             f"(pid {node.pid}): {message}")

    def _jobs_api_ready(self) -> bool:
        # An invalid label selector passes the head, reaches the head node's job agent and is refused
        # there before any job is created: proof that submissions work, leaving no job behind.
        try:
            resp = requests.post(f"{self.dashboard_url}/api/jobs/", timeout=HTTP_TIMEOUT, json={
                "entrypoint": "true", "submission_id": "ray-gitops-readiness-probe",
                "entrypoint_label_selector": {"-": ""}})
        except requests.RequestException:
            return False
        return "Invalid label key" in resp.text

    def _ray_nodes(self, quiet: bool = False) -> list[dict]:
        """ALIVE nodes from the dashboard's state API; [] on errors if quiet."""
        try:
            resp = requests.get(f"{self.dashboard_url}/api/v0/nodes", timeout=HTTP_TIMEOUT,
                                params={"detail": "1", "limit": "10000"})
            nodes = self._check(resp, "listing nodes").json()["data"]["result"]["result"]
        except (requests.RequestException, LocalRayError):
            if quiet:
                return []
            raise
        return [n for n in nodes if n["state"] == "ALIVE"]

    def _check(self, resp: requests.Response, what: str) -> requests.Response:
        if not resp.ok:
            raise LocalRayError(f"local Ray cluster {self.name!r}: {what} failed: "
                                f"HTTP {resp.status_code}: {resp.text[-800:]}")
        return resp
