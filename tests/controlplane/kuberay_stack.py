"""The real KubeRay operator on a test control plane of its own, as users run it.

On top of an etcd + kube-apiserver (``kube_controlplane``) this starts kube-scheduler,
kube-controller-manager (garbage collector, Jobs, EndpointSlices, namespaces...), kwok with a few
fake nodes that have CPU and memory (Pods bound to them become Running and Ready; Pods of a Job
complete), and the KubeRay operator watching all namespaces. Everything listens on 127.0.0.1 and
is stopped by PID. Binaries come from ``build-operator.sh``; kwok's Stage definitions are read from
the ``sigs.k8s.io/kwok`` module in the Go module cache. Versions are pinned in ``versions.env``.
"""

from __future__ import annotations

import atexit
import os
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import kube_controlplane
from kube_controlplane import ControlPlane, ControlPlaneError, Process, free_port, http_ok
from kubernetes import client

BUILD_SCRIPT = kube_controlplane.HERE / "build-operator.sh"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_VALUE = "fake"
NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110"}
NODE_COUNT = 3
POD_CIDR = "10.244.0.0/16"  # kwok's fake Pod IPs; apart from the API server's 10.0.0.0/24 Services
NODE_LEASE_SECONDS = 40  # kwok renews each fake node's Lease, as a kubelet does
# kube-controller-manager controllers: what KubeRay's children need, and the node lifecycle
# controller, which lifts the not-ready taint the API server puts on every new Node.
CONTROLLERS = (
    "garbage-collector-controller",
    "job-controller",
    "ttl-after-finished-controller",
    "endpointslice-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
    "node-lifecycle-controller",
)
# kwok's stages as kwokctl uses them: nodes become Ready and keep a heartbeat (with a Lease), Pods
# become Running and Ready, Job Pods Succeeded, and a deleted Pod is removed (no kubelet does it).
KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)


def ensure_binaries() -> Path:
    """Directory with kube-controller-manager, kube-scheduler, kwok and ray-operator (built once)."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-kube_controlplane.LOG_TAIL_LINES:])
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed ({proc.returncode}):\n{tail}")
    return Path(proc.stdout.strip().splitlines()[-1])


def kwok_stage_files() -> list[Path]:
    """kwok's Stage YAML files from the pinned sigs.k8s.io/kwok module (downloaded if missing)."""
    root = kube_controlplane.module_dir(f"sigs.k8s.io/kwok@v{kube_controlplane.read_versions()['KWOK_VERSION']}")
    files = [root / stage for stage in KWOK_STAGES]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise ControlPlaneError(f"kwok stages missing from the module cache: {missing}")
    return files


def _insecure_local_tls() -> ssl.SSLContext:
    """For health probes of 127.0.0.1 servers with self-signed certificates."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass
class OperatorStack:
    """A control plane with the KubeRay operator and the Kubernetes parts it relies on."""

    plane: ControlPlane
    nodes: list[str]
    startup_seconds: float = 0.0
    _processes: list[Process] = field(default_factory=list, repr=False)

    @classmethod
    def start(cls, assets: Path, binaries: Path, node_count: int = NODE_COUNT) -> OperatorStack:
        """Start a control plane, then the scheduler, controller manager, kwok and the operator."""
        started = time.monotonic()
        plane = kube_controlplane.start_control_plane(assets)
        stack = cls(plane=plane, nodes=[f"kwok-node-{index}" for index in range(node_count)])
        atexit.register(stack.stop)
        try:
            stack._start_scheduler(binaries)
            stack._start_controller_manager(binaries)
            stack._start_kwok(binaries)
            stack._start_operator(binaries)
        except BaseException:
            stack.stop()  # keep the workdir: its logs explain the failure
            raise
        stack.startup_seconds = time.monotonic() - started
        return stack

    @property
    def workdir(self) -> Path:
        """Where the logs of every process are: ``<name>.log``."""
        return self.plane.workdir

    def stop(self) -> None:
        """Stop the processes this stack started, newest first, then its control plane; idempotent."""
        while self._processes:
            self._processes.pop().stop()
        self.plane.stop()

    def cleanup(self) -> None:
        """Stop everything and remove the working directory."""
        self.stop()
        self.plane.cleanup()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._processes.append(kube_controlplane.spawn(name, argv, self.workdir, env))

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        kube_controlplane.wait_for(what, ready, self._processes)

    def _start_scheduler(self, binaries: Path) -> None:
        port = free_port()
        self._spawn("kube-scheduler", [
            str(binaries / "kube-scheduler"),
            f"--kubeconfig={self.plane.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kube-scheduler-certs'}",
        ])
        self._wait("kube-scheduler /healthz", lambda: http_ok(
            f"https://127.0.0.1:{port}/healthz", _insecure_local_tls()))

    def _start_controller_manager(self, binaries: Path) -> None:
        port = free_port()
        self._spawn("kube-controller-manager", [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={self.plane.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'kube-controller-manager-certs'}",
            f"--controllers={','.join(CONTROLLERS)}",
        ])
        self._wait("kube-controller-manager /healthz", lambda: http_ok(
            f"https://127.0.0.1:{port}/healthz", _insecure_local_tls()))

    def _start_kwok(self, binaries: Path) -> None:
        with self.plane.api_client() as api_client:
            core = client.CoreV1Api(api_client)
            for name in self.nodes:
                core.create_node(_fake_node(name))
            self._spawn("kwok", [
                str(binaries / "kwok"),
                f"--kubeconfig={self.plane.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}={FAKE_NODE_VALUE}",
                f"--cidr={POD_CIDR}",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                f"--server-address=127.0.0.1:{free_port()}",
                *(f"--config={path}" for path in kwok_stage_files()),
            ])
            self._wait(f"{len(self.nodes)} fake nodes Ready and untainted",
                       lambda: _nodes_schedulable(core, self.nodes))

    def _start_operator(self, binaries: Path) -> None:
        probe_port = free_port()
        self._spawn("ray-operator", [
            str(binaries / "ray-operator"),
            f"--metrics-addr=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}",
            "--enable-leader-election=false",
            "--feature-gates=RayCronJob=true",  # alpha, off by default: the RayCronJob tests need its controller
            "--log-stdout-encoder=console",
        ], env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)})
        self._wait("ray-operator /readyz", lambda: http_ok(f"http://127.0.0.1:{probe_port}/readyz"))


def start_operator_stack(assets: Path, binaries: Path, attempts: int = 3) -> OperatorStack:
    """Start an OperatorStack; a free port can be taken by another process before one of its
    servers binds it, so a failed start is retried with new ports (bounded)."""
    for _ in range(attempts - 1):
        try:
            return OperatorStack.start(assets, binaries)
        except ControlPlaneError:
            continue
    return OperatorStack.start(assets, binaries)


def _fake_node(name: str) -> client.V1Node:
    """A Node kwok manages (by annotation), with CPU, memory and Pod capacity and no taints."""
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name,
            annotations={FAKE_NODE_ANNOTATION: FAKE_NODE_VALUE},
            labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "type": "kwok"},
        ),
        status=client.V1NodeStatus(capacity=NODE_CAPACITY, allocatable=NODE_CAPACITY),
    )


def _nodes_schedulable(core: client.CoreV1Api, names: list[str]) -> bool:
    """Every named node is Ready (kwok) and has no taint left (node lifecycle controller)."""
    schedulable = {
        node.metadata.name
        for node in core.list_node().items
        if not node.spec.taints
        and any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
    }
    return set(names) <= schedulable
