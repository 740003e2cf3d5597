"""One real local Ray cluster: starts, tracks, scales and stops its nodes, one `ray start --block`
process (own session, own ports, cluster-private temp dir) per node; its head's HTTP APIs are reached through
`dashboard.Dashboard`. Used by `clusters.Clusters`. It must never run `ray stop` nor signal a process it did not
start, so a user's own Ray and other local clusters on the same host keep running.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from .dashboard import Dashboard
from .nodes import (
    MARKER_ENV,
    NODE_LABEL,
    TOKEN_FILE,
    LocalRayError,
    Node,
    NodeSpec,
    allocate_ports,
    command_line,
    node_environment,
    start_ticks,
    sweep,
    write_token,
)


class LocalRayCluster:
    """One local Ray cluster. Safe to call from several threads, except stop() while another thread
    is still adding a worker."""

    def __init__(self, name: str, cluster_dir: Path, token: str, temp_dir: str, ray_temp_dir: str,
                 auth_token: str | None) -> None:
        self.name = name
        self.temp_dir = temp_dir  # this cluster's private directory (0700) under /tmp, removed at stop
        self.ray_temp_dir = ray_temp_dir  # Ray's --temp-dir for every node (Ray's own logs are in there)
        self._dir = cluster_dir
        self._token = token  # marks the cluster's processes (MARKER_ENV); not a secret
        self._auth_token = auth_token  # Ray's token authentication; None: adopted from an earlier version
        self._head: Node | None = None
        self._workers: list[Node] = []
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self._head_node().ports['dashboard-port']}"

    @property
    def auth_headers(self) -> dict[str, str]:
        """What every request to the cluster's dashboard carries (Ray's token authentication)."""
        return {"Authorization": f"Bearer {self._auth_token}"} if self._auth_token else {}

    @property
    def token_file(self) -> Path | None:
        """The file holding the cluster's token (0600, in its state directory), read by its nodes."""
        return self._dir / TOKEN_FILE if self._auth_token else None

    @property
    def dashboard(self) -> Dashboard:
        """The client of the head's dashboard: Jobs, state and Serve APIs."""
        return Dashboard(self.name, self.dashboard_url, self.auth_headers)

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
        temp_dir = f"/tmp/rgo-{token}"  # short: Ray's Unix socket paths must stay under 107 characters
        cluster_dir = Path(state_dir) / name
        cluster_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cluster_dir.chmod(0o700)
        self = cls(name, cluster_dir, token, temp_dir, f"{temp_dir}/ray", write_token(cluster_dir / TOKEN_FILE))
        shutil.rmtree(self._dir / "logs", ignore_errors=True)
        try:
            # Ray makes its temp dir (sockets, session, runtime envs) writable by everyone; this parent keeps
            # other users out of it.
            os.mkdir(temp_dir, 0o700)
            node = self._launch(head, is_head=True)
            self._wait(node, timeout, self.dashboard.jobs_api_ready, "the Jobs API to accept submissions")
        except BaseException:
            self.stop()
            raise
        return self

    @classmethod
    def load(cls, name: str, state_dir: Path) -> LocalRayCluster | None:
        """The cluster of the record, alive or not (None without a record); changes nothing."""
        path = Path(state_dir) / name / "cluster.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        token_file = path.parent / TOKEN_FILE
        auth_token = token_file.read_text().strip() if token_file.exists() else None
        self = cls(name, path.parent, record["token"], record["temp_dir"],
                   record.get("ray_temp_dir", record["temp_dir"]), auth_token)
        self._head = Node(**record["head"])
        self._workers = [Node(**w) for w in record["workers"]]
        return self

    @classmethod
    def adopt(cls, name: str, state_dir: Path) -> LocalRayCluster | None:
        """Re-attach from the record; None when there is none or its head is gone. Changes nothing (a look must
        not act): `stop()` of the `load`ed cluster cleans up what a dead one left."""
        self = cls.load(name, state_dir)
        return self if self is not None and self._alive(self._head_node()) else None

    def add_worker(self, spec: NodeSpec, *, timeout: float = 120) -> None:
        """Start one worker node of spec.group; return when Ray reports it ALIVE."""
        if spec.group == "head":
            raise ValueError("workers cannot use group 'head'")
        node = self._launch(spec, is_head=False)
        try:
            self._wait(node, timeout, lambda: any(n["labels"].get(NODE_LABEL) == node.token
                                                  for n in self.dashboard.nodes(quiet=True)),
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

    def stop(self, timeout: float = 30) -> None:
        """Stop every node we started (workers first, head last); delete the record, the token and the temp dir."""
        deadline = time.monotonic() + timeout
        with self._lock:
            workers, self._workers = self._workers, []
        self._terminate(workers, deadline - timeout / 2)
        if self._head is not None:
            self._terminate([self._head], deadline)
        sweep(f"{self._token}.")
        (self._dir / "cluster.json").unlink(missing_ok=True)
        (self._dir / TOKEN_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _head_node(self) -> Node:
        if self._head is None:
            raise LocalRayError(f"local Ray cluster {self.name!r} has no head node")
        return self._head

    def _launch(self, spec: NodeSpec, is_head: bool) -> Node:
        token = secrets.token_hex(3)
        ports = allocate_ports(is_head)
        log = self._dir / "logs" / f"{spec.group}-{token}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = node_environment(os.environ, self.token_file)
        env.update({k: str(v) for k, v in ports.items() if k.isupper()})
        env.update({"PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", MARKER_ENV: f"{self._token}.{token}"})
        cmd = command_line(spec, token, self.ray_temp_dir, ports, None if is_head else self.gcs_address)
        with open(log, "ab") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, cwd=self._dir, start_new_session=True)
        node = Node(spec.group, token, popen.pid, start_ticks(popen.pid) or 0, str(log), ports)
        with self._lock:
            self._popens[popen.pid] = popen
            if is_head:
                self._head = node
            else:
                self._workers.append(node)
            self._save()
        return node

    def _forget(self, node: Node) -> None:
        with self._lock:
            self._workers = [w for w in self._workers if w != node]
            self._save()

    def _save(self) -> None:
        record = {"name": self.name, "token": self._token, "temp_dir": self.temp_dir, "ray_temp_dir": self.ray_temp_dir,
                  "dashboard_url": self.dashboard_url, "gcs_address": self.gcs_address,
                  "head": asdict(self._head_node()), "workers": [asdict(w) for w in self._workers]}
        tmp = self._dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self._dir / "cluster.json")

    def _alive(self, node: Node) -> bool:
        if (popen := self._popens.get(node.pid)) is not None:
            return popen.poll() is None  # also reaps it
        return start_ticks(node.pid) == node.start_ticks

    def _terminate(self, nodes: list[Node], deadline: float) -> None:
        """SIGTERM each live node's process group, wait until the deadline, then SIGKILL what is left."""
        live = [n for n in nodes if self._alive(n)]
        for node in live:
            with contextlib.suppress(OSError):
                os.killpg(node.pid, signal.SIGTERM)
        while any(self._alive(n) for n in live) and time.monotonic() < deadline:
            time.sleep(0.2)
        for node in nodes:  # a live node's session also holds Ray workers, in process groups of their own
            sweep(f"{self._token}.{node.token}", node.pid if node in live else None)
            if (popen := self._popens.pop(node.pid, None)) is not None:
                popen.wait(5)

    def _wait(self, node: Node, timeout: float, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self._alive(node):
                raise self._error(node, f"exited while waiting for {what}")
            if time.monotonic() > deadline:
                raise self._error(node, f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def _error(self, node: Node, message: str) -> LocalRayError:
        with contextlib.suppress(OSError), open(node.log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4000))
            tail = f.read().decode(errors="replace").splitlines()[-25:]
            message += f". Last lines of {node.log}:\n" + "\n".join(tail)
        return LocalRayError(f"local Ray cluster {self.name!r}, node {node.group}/{node.token} "
                             f"(pid {node.pid}): {message}")
