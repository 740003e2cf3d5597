"""The local Ray clusters of the target: adopted after a restart, started, scaled and stopped.

What KubeRay does with pods, done with local Ray nodes: a RayCluster's head and
`clamp(replicas, minReplicas, maxReplicas) x numOfHosts` workers per group, with resources from
`rayStartParams` or the first container's limits. The machine's cap on Ray nodes (`limits`) holds over
every cluster: a start or scale-up beyond it is refused before any node starts. Thread-safe (one lock
around the name -> cluster map, one around the node budget).
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import PermanentError, TemporaryError
from ...kuberay import worker_groups
from ...model import desired_workers, parse_quantity
from ...pipeline.target import strip
from .limits import Limits, cluster_nodes, nodes_text
from .nodes import NodeSpec
from .runtime import LocalRayCluster

log = logging.getLogger(__name__)
HEAD = "head"
_HASH_EXCLUDED = ["/workerGroupSpecs/*/replicas", "/workerGroupSpecs/*/minReplicas", "/workerGroupSpecs/*/maxReplicas",
                  "/workerGroupSpecs/*/scaleStrategy", "/upgradeStrategy"]


def node_spec(group_name: str, group: dict[str, Any]) -> NodeSpec:
    """Ray resources of a node from `rayStartParams`, else from the first container's limits (as KubeRay)."""
    params = group.get("rayStartParams") or {}
    container = ((group.get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    resources = container.get("resources") or {}
    limits = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}

    def pick(param: str, limit: str, integer: bool) -> float | None:
        if param in params:
            return float(params[param])
        if limit in limits:
            value = parse_quantity(limits[limit])
            return float(math.ceil(value)) if integer else value
        return None

    memory = pick("memory", "memory", False)
    store = params.get("object-store-memory")
    custom = params.get("resources")
    return NodeSpec(group=group_name, num_cpus=pick("num-cpus", "cpu", True),
                    num_gpus=pick("num-gpus", "nvidia.com/gpu", True),
                    memory=int(memory) if memory else None, object_store_memory=int(store) if store else None,
                    resources=json.loads(custom.strip("'\"").replace('\\"', '"')) if custom else {})


def template_hash(spec: dict[str, Any]) -> str:
    """What `upgradeStrategy: Recreate` compares: the spec without replica counts (as KubeRay)."""
    return json.dumps(strip(spec, _HASH_EXCLUDED), sort_keys=True)


class Clusters:
    """Running local clusters by name, their records under `directory`."""

    def __init__(self, directory: Path, limits: Limits | None = None) -> None:
        self.directory = directory
        self.limits = limits or Limits.of_machine()
        self._clusters: dict[str, LocalRayCluster] = {}
        self._claims: dict[str, int] = {}  # cluster -> nodes it may run (claimed before they start)
        self._lock = threading.Lock()
        self._budget = threading.Lock()  # taken before `_lock`, never inside it

    def get(self, name: str) -> LocalRayCluster | None:
        """The running cluster `name` (adopted from its record after a restart), or None."""
        with self._lock:
            cluster = self._clusters.get(name)
            if cluster is None:
                cluster = LocalRayCluster.adopt(name, self.directory)
                if cluster is not None:
                    self._clusters[name] = cluster
            return cluster

    def start(self, name: str, spec: dict[str, Any]) -> LocalRayCluster:
        """A new cluster for a RayCluster spec (stopping a previous one of that name), scaled to it."""
        self.claim(name, spec)
        self.stop(name, release=False)
        log.info("local: starting Ray cluster %s", name)
        cluster = LocalRayCluster.start(name, node_spec(HEAD, spec.get("headGroupSpec") or {}), self.directory)
        with self._lock:
            self._clusters[name] = cluster
        self.scale(cluster, spec)
        return cluster

    def stop(self, name: str, release: bool = True) -> None:
        """Stop cluster `name`, or clean up what it left if its head is gone."""
        cluster = self.get(name) or LocalRayCluster.load(name, self.directory)
        if cluster is not None:
            log.info("local: stopping Ray cluster %s", name)
            cluster.stop()
        with self._lock:
            self._clusters.pop(name, None)
        if release:
            with self._budget:
                self._claims.pop(name, None)

    def nodes_in_use(self, exclude: str = "") -> int:
        """Ray nodes of every cluster but `exclude`: each one's claim, or what it runs if that is more
        (clusters adopted from their records after a restart count too)."""
        names = set(self._claims) | {p.parent.name for p in self.directory.glob("*/cluster.json")}
        total = 0
        for name in names - {exclude}:
            cluster = self.get(name)
            running = 0 if cluster is None else 1 + sum(map(len, cluster.worker_pids().values()))
            total += max(running, self._claims.get(name, 0))
        return total

    def claim(self, name: str, spec: dict[str, Any]) -> None:
        """Reserve the nodes cluster `name` runs for `spec`; refuse (PermanentError) if they do not fit in
        the machine's cap beside every other cluster. Shrinking is never refused."""
        nodes = cluster_nodes(spec)
        with self._budget:
            current = self._claims.get(name)
            if current is None or nodes > current:
                others = self.nodes_in_use(exclude=name)
                if others + nodes > self.limits.nodes:
                    raise PermanentError(
                        f"Ray cluster {name} needs {nodes_text(nodes)}, but other local clusters run {others} and "
                        f"{self.limits.nodes_reason()} leaves room for {max(0, self.limits.nodes - others)}")
            self._claims[name] = nodes

    def scale(self, cluster: LocalRayCluster, spec: dict[str, Any]) -> None:
        """Start or stop worker raylets until each group runs its desired count (claimed first)."""
        self.claim(cluster.name, spec)
        groups = worker_groups({"kind": "RayCluster", "spec": spec})
        running = cluster.worker_pids()
        for name in set(running) - set(groups):
            while cluster.remove_worker(name):
                pass
        for name, group in groups.items():
            want, have = desired_workers(group), len(running.get(name, []))
            for _ in range(want - have):
                cluster.add_worker(node_spec(name, group))
            for _ in range(have - want):
                cluster.remove_worker(name)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = cluster.dashboard.alive_nodes()
            if all(alive.get(n, 0) == desired_workers(g) for n, g in groups.items()):
                return
            time.sleep(0.5)
        raise TemporaryError(f"RayCluster {cluster.name}: workers did not reach the desired counts in 60s")
