"""The daemon against the real KubeRay operator: a Git remote of three Kubernetes environments (the one
under test and two neighbours, each in its own namespace), `ray-gitops run` as a subprocess on it, and
what users look at: its metrics and `ray-gitops status -o json`."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kuberay_kit import cluster_pods, pod_ready, raycluster_spec, workers
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GitRemote
from tests.daemon import DaemonProcess

ENV = "op"  # the environment under test
NEIGHBOURS = ("n1", "n2")  # reconciled beside it, on the same cluster, in namespaces of their own
ENV_INTERVAL = "2s"  # each environment's drift re-check (spec.interval)
POLL_INTERVAL = "1s"  # the daemon's Git poll (--interval)
WRITE_VERBS = ("apply", "create", "update", "delete", "dryrun-apply")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def raycluster(name: str, replicas: int = 1, memory: str = "2Gi", recreate: bool = False) -> str:
    """A RayCluster as a user commits it: a head and the worker group `workers`."""
    spec = raycluster_spec(replicas)
    for group in (spec["headGroupSpec"], spec["workerGroupSpecs"][0]):
        resources = group["template"]["spec"]["containers"][0]["resources"]
        resources["requests"]["memory"] = resources["limits"]["memory"] = memory
    if recreate:
        spec["upgradeStrategy"] = {"type": "Recreate"}
    return yaml.safe_dump({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name}, "spec": spec})


def rayjob(name: str, labels: dict[str, str] | None = None) -> str:
    """A RayJob that brings its own cluster (`rayClusterSpec`, one worker)."""
    metadata: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    return yaml.safe_dump({"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": _job_spec()})


def raycronjob(name: str, schedule: str, suspend: bool = False) -> str:
    """A RayCronJob whose runs are `rayjob`'s: each brings its own cluster."""
    spec = {"schedule": schedule, "jobTemplate": _job_spec(), **({"suspend": True} if suspend else {})}
    return yaml.safe_dump({"apiVersion": "ray.io/v1", "kind": "RayCronJob", "metadata": {"name": name}, "spec": spec})


def _job_spec() -> dict[str, Any]:
    return {"entrypoint": "python -c 'print(1)'", "rayClusterSpec": raycluster_spec(1)}


def configmap(name: str, owner: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                           "data": {"owner": owner}})


def environment(name: str, namespace: str, interval: str = ENV_INTERVAL) -> str:
    """An environment on the daemon's cluster `default` (its --kubeconfig and --kube-context)."""
    return yaml.safe_dump({"apiVersion": "gitops.ray.io/v1alpha1", "kind": "Environment", "metadata": {"name": name},
                           "spec": {"target": {"kubernetes": {"namespace": namespace}}, "interval": interval}})


@dataclass
class Loop:
    """One Git remote and one daemon reconciling it onto the operator's control plane."""

    remote: GitRemote
    state: Path
    log: Path
    api_client: client.ApiClient
    namespaces: dict[str, str]  # environment -> namespace
    kubeconfig: Path
    context: str
    daemon: DaemonProcess | None = None
    drift_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (environment, kind) -> max seen

    @property
    def namespace(self) -> str:
        return self.namespaces[ENV]

    # -- Git ------------------------------------------------------------------------------------------
    def set_interval(self, interval: str) -> None:
        """Give the environment under test another spec.interval (in the next commit)."""
        self.remote.write(f"environments/{ENV}/environment.yaml", environment(ENV, self.namespace, interval))

    @property
    def cluster_flags(self) -> list[str]:
        """The `run` flags that make the test control plane the daemon's cluster `default`."""
        return ["--kubeconfig", str(self.kubeconfig), "--kube-context", self.context]

    def commit(self, message: str, **files: str | None) -> str:
        """Write (or with None remove) `environments/op/<name>.yaml` files, commit and push; the sha."""
        for name, text in files.items():
            path = f"environments/{ENV}/{name}.yaml"
            if text is None:
                self.remote.remove(path)
            else:
                self.remote.write(path, text)
        return self.remote.commit(message)

    # -- the daemon -----------------------------------------------------------------------------------
    def start(self) -> DaemonProcess:
        self.daemon = DaemonProcess(self.remote.url, self.state, self.log, ["--interval", POLL_INTERVAL,
                                                                            *self.cluster_flags])
        return self.daemon

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not end in time (by PID); its exit code (None: never started)."""
        if self.daemon is None:
            return None
        self.daemon.stop()
        return self.daemon.proc.returncode

    def samples(self) -> Samples:
        """Every sample of /metrics ({} while the daemon does not answer); records the drifted_objects seen."""
        assert self.daemon is not None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.daemon.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        found = {(s.name, frozenset(s.labels.items())): s.value
                 for family in text_string_to_metric_families(text) for s in family.samples}
        for (name, labels), value in found.items():
            if name == "ray_gitops_drifted_objects":
                key = (dict(labels)["environment"], dict(labels)["kind"])
                self.drift_seen[key] = max(value, self.drift_seen.get(key, 0.0))
        return found

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample's value (None when absent)."""
        return self.samples().get((name, frozenset(labels.items())))

    def writes(self) -> dict[str, float]:
        """ray_gitops_kube_requests_total of the verbs that write (and dry-run)."""
        samples = self.samples()
        return {verb: samples.get(("ray_gitops_kube_requests_total", frozenset({("verb", verb)})), 0.0)
                for verb in WRITE_VERBS}

    def reconciles(self, environment: str = ENV, result: str = "noop") -> float:
        return self.metric("ray_gitops_reconcile_total", environment=environment, result=result) or 0.0

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 90.0, poll: float = 0.25) -> float:
        """Poll `check` (the daemon must stay up) until true; seconds waited. Fails with the daemon's log."""
        assert self.daemon is not None
        started = time.monotonic()
        self.daemon.wait_for(what, check, timeout=timeout, poll=poll)
        return time.monotonic() - started

    def checks(self, environment: str = ENV) -> float:
        """No-op reconciles of `environment`, and the interval reconciles it skipped as quiet."""
        skipped = self.metric("ray_gitops_reconcile_skipped_total", environment=environment) or 0.0
        return self.reconciles(environment) + skipped

    def cycles(self, count: int, environment: str = ENV) -> None:
        """Wait until `count` more intervals of `environment` passed: no-op reconciles, or skipped as quiet."""
        target = self.checks(environment) + count
        self.wait(f"{count} no-op cycles of {environment}", lambda: self.checks(environment) >= target,
                  timeout=30 + 5 * count)

    def status(self) -> dict[str, dict[str, Any]]:
        """`ray-gitops status -o json`, by environment."""
        done = subprocess.run([sys.executable, "-m", "reconciler", "status", "--state-dir", str(self.state),
                               "-o", "json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"status exited {done.returncode}: {done.stderr}"
        return {row["environment"]: row for row in json.loads(done.stdout)}

    def status_table(self) -> str:
        return subprocess.run([sys.executable, "-m", "reconciler", "status", "--state-dir", str(self.state)],
                              capture_output=True, text=True, check=True, timeout=60).stdout

    # -- the cluster ----------------------------------------------------------------------------------
    def ready_workers(self, cluster: str) -> int:
        return sum(pod_ready(p) for p in workers(cluster_pods(self.api_client, self.namespace, cluster)))

    def neighbours_in_sync(self, revision: str) -> None:
        """The neighbours reach `revision`, Synced and Healthy, with no failed reconcile and their ConfigMaps
        as Git has them."""
        def reached() -> bool:
            states = self.status()
            return all((states[name]["revision"], states[name]["sync_status"], states[name]["health_status"])
                       == (revision, "Synced", "Healthy") for name in NEIGHBOURS)
        self.wait(f"the neighbours Synced and Healthy at {revision[:12]}", reached, timeout=30, poll=0.5)
        core = client.CoreV1Api(self.api_client)
        for name in NEIGHBOURS:
            assert self.metric("ray_gitops_reconcile_total", environment=name, result="error") is None
            assert core.read_namespaced_config_map("settings", self.namespaces[name]).data == {"owner": name}

def new_loop(tmp_path: Path, api_client: client.ApiClient, kubeconfig: Path, context: str) -> Loop:
    """Three namespaces and a Git remote with the three environments (neighbours: a ConfigMap each)."""
    suffix = secrets.token_hex(3)
    namespaces = {name: f"{name}-{suffix}" for name in (ENV, *NEIGHBOURS)}
    core = client.CoreV1Api(api_client)
    for namespace in namespaces.values():
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    remote = GitRemote(tmp_path)
    for name, namespace in namespaces.items():
        remote.write(f"environments/{name}/environment.yaml", environment(name, namespace))
        if name != ENV:
            remote.write(f"environments/{name}/settings.yaml", configmap("settings", name))
    return Loop(remote, tmp_path / "state", tmp_path / "daemon.log", api_client, namespaces, kubeconfig, context)


def delete_namespaces(loop: Loop) -> None:
    """Delete the namespaces (the namespace controller removes what is left in them)."""
    core = client.CoreV1Api(loop.api_client)
    for namespace in loop.namespaces.values():
        core.delete_namespace(namespace)
