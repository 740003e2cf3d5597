"""Processes of local Ray nodes: node specs, `ray start` command lines, free ports, and /proc helpers
that find and stop exactly the processes a cluster started (never `ray stop`, never anyone else's).
Used by `runtime.LocalRayCluster`. Linux only (reads /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import TemporaryError

GROUP_LABEL = "ray-gitops.io/group"  # Ray node label: the worker group ("head" for the head)
NODE_LABEL = "ray-gitops.io/node"  # Ray node label: our per-node token
MARKER_ENV = "RAY_GITOPS_NODE"  # "<cluster token>.<node token>", inherited by a node's processes
DEFAULT_OBJECT_STORE_BYTES = 128 * 1024**2
WORKER_PORTS = 64  # ports per node for Ray's worker and driver processes
PORT_RANGE = (20000, 32000)  # above Ray's defaults (6379, 8265, 10001-19999), below Linux ephemeral
HTTP_TIMEOUT = 15.0  # the head itself waits up to 10 s for its job agent before answering
LAUNCHER = str(Path(__file__).with_name("launch.py"))  # `ray start`, kept on loopback (see launch.py)
PRELOAD_DIR = str(Path(__file__).with_name("preload"))  # on the nodes' PYTHONPATH: only the module below
PRELOAD_MODULE = "ray_gitops_loopback"  # imported first by every Python worker (see preload/ray_gitops_loopback.py)
TOKEN_FILE = "auth_token"  # in the cluster's state directory, mode 0600
# Every node's environment: Ray's token authentication (KubeRay's `authOptions.mode: token`), and
# Ray's switch that keeps a loopback node IP as given in every process of the node (launch.py).
KEPT_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV",
                      "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"})
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


class LocalRayError(TemporaryError):
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
class Node:
    group: str
    token: str
    pid: int  # of `ray start --block`, leader of the node's own session and process group
    start_ticks: int  # from /proc: guards against PID reuse
    log: str
    ports: dict[str, int]  # lower-case keys are `ray start` flags, upper-case ones environment variables


def process_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state, ppid, pgrp, session, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot; None if the process is gone or a zombie."""
    fields = process_stat(pid)
    return None if fields is None or fields[0] in "ZX" else int(fields[19])


def sweep(marker_prefix: str, session: int | None = None, timeout: float = 10) -> None:
    """SIGKILL every live process whose MARKER_ENV starts with marker_prefix (this catches job drivers,
    which Ray starts in new sessions) or that is in `session`, and wait until they are gone. Pass the
    session of a verified live node only: Linux reuses no pid while its session has members, but a
    dead node's pid may lead someone else's session by now. Processes that write their title over
    their environment (ray::DashboardAgent, ...) lose the marker; they die with their raylet."""
    wanted = f"{MARKER_ENV}={marker_prefix}".encode()
    killed = []
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        with contextlib.suppress(OSError):
            fields = process_stat(pid)
            if fields and fields[0] not in "ZX" and (int(fields[3]) == session or any(
                    v.startswith(wanted) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))):
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, int(fields[19])))
    deadline = time.monotonic() + timeout
    while any(start_ticks(pid) == ticks for pid, ticks in killed) and time.monotonic() < deadline:
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


def free_port() -> int:
    """One port for a process of a cluster that is not a node's own (Serve's HTTP proxy), from the same range."""
    return _reserve(1)


def allocate_ports(is_head: bool) -> dict[str, int]:
    names = _NODE_PORT_FLAGS + (_HEAD_PORT_FLAGS + _HEAD_PORT_ENVS if is_head else ())
    ports = {name: _reserve(1) for name in names}
    ports["min-worker-port"] = _reserve(WORKER_PORTS)
    ports["max-worker-port"] = ports["min-worker-port"] + WORKER_PORTS - 1
    return ports


def write_token(path: Path) -> str:
    """A new random token (256 bits, as Ray's own `ray get-auth-token --generate`) in a new 0600 file."""
    path.unlink(missing_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def node_environment(base: Mapping[str, str], token_file: Path | None) -> dict[str, str]:
    """The environment of a node's `ray start` (inherited by every process of the node, job drivers too): only
    what a program needs from the daemon's (KEPT_ENV: paths, locale, time zone, proxies; none of the daemon's
    settings, credentials or secrets), loopback kept as given (and in every Python worker, `preload/`), and
    token authentication with the token in `token_file` (None: a cluster started before ray-gitops used tokens,
    adopted as it is)."""
    env = {k: v for k, v in base.items() if k in KEPT_ENV or k.startswith("LC_")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_preload_python_modules"] = PRELOAD_MODULE  # every Python worker: its gRPC servers on loopback
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PRELOAD_DIR, base.get("PYTHONPATH")) if p)
    if token_file is not None:
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.path.abspath(token_file)})
    return env


def command_line(spec: NodeSpec, token: str, temp_dir: str, ports: dict[str, int], gcs: str | None) -> list[str]:
    args = [sys.executable, "-P", LAUNCHER, "start", "--block", "--node-ip-address=127.0.0.1",
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


