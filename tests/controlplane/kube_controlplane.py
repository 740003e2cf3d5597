"""Envtest-style Kubernetes test control plane: real etcd + kube-apiserver on 127.0.0.1.

Binaries come from ``build.sh`` (built from Go modules, or ``KUBEBUILDER_ASSETS``); the KubeRay
CRDs are read from the ``github.com/ray-project/kuberay/ray-operator`` Go module in the module
cache and installed with server-side apply. Versions are pinned in ``versions.env``.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from urllib3 import HTTPResponse

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.env"
BUILD_SCRIPT = HERE / "build.sh"
CONTEXT_NAME = "envtest"
CRD_FIELD_MANAGER = "ray-gitops-envtest"
ADMIN_USER = "envtest-admin"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_CRD_RESOURCE = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~5x faster on 1 MB CRDs


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started."""


def read_versions() -> dict[str, str]:
    """The pinned versions from versions.env (KEY=VALUE lines, '#' comments)."""
    versions: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def ensure_assets() -> Path:
    """Directory with kube-apiserver and etcd: KUBEBUILDER_ASSETS, or built (once) by build.sh."""
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed ({proc.returncode}):\n{_tail(proc.stderr)}")
    return Path(proc.stdout.strip().splitlines()[-1])


def module_dir(module: str) -> Path:
    """The module cache directory of ``module@version`` (downloaded if missing)."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", module],
        capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        raise ControlPlaneError(f"go mod download {module} failed: {info.get('Error', proc.stderr)}")
    return Path(info["Dir"])


def kuberay_crd_files() -> list[Path]:
    """The KubeRay CRD YAML files from the pinned ray-operator module (downloaded if missing)."""
    crd_dir = module_dir(
        f"github.com/ray-project/kuberay/ray-operator@v{read_versions()['KUBERAY_VERSION']}"
    ) / "config" / "crd" / "bases"
    files = sorted(crd_dir.glob("ray.io_*.yaml"))
    if not files:
        raise ControlPlaneError(f"no ray.io_*.yaml CRDs in {crd_dir}")
    return files


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: the child only calls it


def _die_with_parent() -> None:
    """preexec_fn: the child is killed if the test process dies without cleaning up.

    SIGKILL, not SIGTERM: a kube-apiserver whose etcd vanishes during shutdown never exits.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Process:
    """A child process started by ``spawn``, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; only this PID."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- last lines of {self.name} log {self.log} ---\n{_tail(text)}"


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``argv`` in its own session, output to ``log_dir/<name>.log``, killed with this process."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only a prctl call, no locks or imports
        )
    return Process(name, popen, log)


def wait_for(
    what: str, ready: Callable[[], bool], processes: list[Process], timeout: float = START_TIMEOUT_S
) -> None:
    """Poll ``ready`` until it is true; fail early if one of ``processes`` exits, with their log tails."""
    deadline = time.monotonic() + timeout
    while not ready():
        exited = [p for p in processes if p.popen.poll() is not None]
        if exited or time.monotonic() > deadline:
            reason = f"{exited[0].name} exited with {exited[0].popen.returncode}" if exited else (
                f"timed out after {timeout:.0f}s")
            logs = "\n".join(p.log_tail() for p in processes)
            raise ControlPlaneError(f"waiting for {what}: {reason}\n{logs}")
        time.sleep(0.2)


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver pair: ``start()``, then ``cleanup()`` (or just ``stop()``)."""

    workdir: Path
    base_url: str
    token: str
    ca_file: Path
    kubeconfig: Path
    context: str = CONTEXT_NAME
    _processes: list[Process] = field(default_factory=list, repr=False)
    _apiserver_argv: list[str] = field(default_factory=list, repr=False)
    _apiserver: Process | None = field(default=None, repr=False)
    _apiserver_starts: int = field(default=0, repr=False)

    @classmethod
    def start(cls, assets: Path) -> ControlPlane:
        """Start etcd and kube-apiserver, wait for /readyz, write a kubeconfig, install CRDs."""
        workdir = Path(tempfile.mkdtemp(prefix="ray-gitops-envtest-"))
        port = free_port()
        plane = cls(
            workdir=workdir,
            base_url=f"https://127.0.0.1:{port}",
            token=secrets.token_hex(16),
            ca_file=workdir / "certs" / "apiserver.crt",
            kubeconfig=workdir / "kubeconfig",
        )
        atexit.register(plane.stop)
        try:
            etcd_url = plane._start_etcd(assets)
            plane._start_apiserver(assets, port, etcd_url)
            plane._write_kubeconfig()
            plane.install_crds(kuberay_crd_files())
        except BaseException:
            plane.stop()  # keep the workdir: its logs explain the failure
            raise
        return plane

    def api_client(self) -> client.ApiClient:
        """A new ApiClient configured from this control plane's kubeconfig."""
        return config.new_client_from_config(
            config_file=str(self.kubeconfig), context=self.context, persist_config=False
        )

    def stop(self) -> None:
        """Stop the processes this object started, apiserver first; idempotent."""
        while self._processes:
            self._processes.pop().stop()
        self._apiserver = None

    def cleanup(self) -> None:
        """Stop the processes and remove the working directory (etcd data, certs, logs)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def install_crds(self, files: list[Path]) -> None:
        """Server-side apply each CRD (client-side apply's annotation would be too long).

        Responses are read raw: the client's deserialisation of a 1 MB CRD takes about a second.
        """
        with self.api_client() as api_client:
            api = client.CustomObjectsApi(api_client)
            names = []
            for path in files:
                crd = yaml.load(path.read_text(), Loader=_YAML_LOADER)
                applied = _json(api.patch_cluster_custom_object(
                    *_CRD_RESOURCE, crd["metadata"]["name"], crd,
                    field_manager=CRD_FIELD_MANAGER, force=True,
                    _content_type="application/apply-patch+yaml", _preload_content=False,
                ))
                names.append(applied["metadata"]["name"])
            for name in names:
                self._wait(f"CRD {name} Established", functools.partial(_established, api, name))

    def _spawn(self, name: str, argv: list[str]) -> Process:
        process = spawn(name, argv, self.workdir)
        self._processes.append(process)
        return process

    def _start_etcd(self, assets: Path) -> str:
        client_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self._spawn("etcd", [
            str(assets / "etcd"),
            "--name=envtest",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=envtest={peer_url}",
            "--unsafe-no-fsync=true",
        ])
        self._wait("etcd /health", lambda: http_ok(f"{client_url}/health"))
        return client_url

    def _start_apiserver(self, assets: Path, port: int, etcd_url: str) -> None:
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        sa_key = self.workdir / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
        )
        self._apiserver_argv = [
            str(assets / "kube-apiserver"),
            "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # the default refuses a loopback advertise address
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.ca_file.parent}",
            f"--etcd-servers={etcd_url}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            f"--token-auth-file={tokens}",
            f"--service-account-issuer={self.base_url}",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
        ]
        self.start_apiserver()

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again, after `stop_apiserver`) with the same port, etcd, certificates, tokens
        and service-account key; wait for /readyz. Each start logs to its own file."""
        if self._apiserver is not None:
            raise ControlPlaneError("kube-apiserver is already running")
        self._apiserver_starts += 1
        name = "kube-apiserver" if self._apiserver_starts == 1 else f"kube-apiserver-{self._apiserver_starts}"
        self._apiserver = self._spawn(name, self._apiserver_argv)
        self._wait(f"{name} /readyz", self._apiserver_ready)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (SIGTERM, as `Process.stop`); etcd and its data stay. Only for a control
        plane of one's own: every client of it loses the API server until `start_apiserver`."""
        if self._apiserver is None:
            raise ControlPlaneError("kube-apiserver is not running")
        process, self._apiserver = self._apiserver, None
        process.stop()
        self._processes.remove(process)

    def _apiserver_ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return http_ok(f"{self.base_url}/readyz", context, {"Authorization": f"Bearer {self.token}"})

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        wait_for(what, ready, self._processes)

    def _write_kubeconfig(self) -> None:
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {
                "server": self.base_url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [{"name": self.context, "context": {
                "cluster": CONTEXT_NAME, "user": ADMIN_USER}}],
            "current-context": self.context,
        }
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))


def start_control_plane(assets: Path, attempts: int = 3) -> ControlPlane:
    """Start a control plane; a free port can be taken by another process before etcd or the
    API server binds it, so a failed start is retried on new ports (bounded)."""
    for _ in range(attempts - 1):
        try:
            return ControlPlane.start(assets)
        except ControlPlaneError:
            continue
    return ControlPlane.start(assets)


def _established(api: client.CustomObjectsApi, name: str) -> bool:
    crd = _json(api.get_cluster_custom_object(*_CRD_RESOURCE, name, _preload_content=False))
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def _json(response: HTTPResponse) -> dict[str, Any]:
    """The body of a ``_preload_content=False`` response, read whole so the connection is reusable."""
    body: dict[str, Any] = json.loads(response.data)
    return body


def http_ok(url: str, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> bool:
    """True if GET ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=2, context=context
        ) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
