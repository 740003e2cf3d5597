"""How many Ray nodes the local target starts: caps derived from this machine's CPUs, so that Git
content cannot make the daemon start thousands of raylets (`replicas: 2147483647`).

- Workers per group: `spec.policy.maxWorkersPerGroup` if the environment sets it, else
  max(4, 2 x CPUs). `replicas` and `minReplicas`, times `numOfHosts`, must stay within it (they start
  nodes). `maxReplicas` is only the autoscaler's upper bound: above the cap it is accepted with a warning
  and clamped (`clamp`: what the local target reports of a RayCluster's or a RayService's cluster).
- Ray nodes (raylets, heads included) per machine: max(8, 4 x CPUs), over every local cluster of the
  daemon (its state directory), whatever the environment. One object that alone needs more is a
  validation error; `clusters.Clusters` holds the sum at apply time.

A worker node is a whole raylet with its agents (about 350 MB resident, a head about 1.8 GB, measured
with Ray 2.60), so more than two per CPU only oversubscribes the machine; the floors keep the examples
(`maxReplicas: 4`) valid on a one-CPU machine.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...kuberay import cluster_spec, cluster_spec_path, dotted
from ...model import EnvironmentSpec, desired_workers
from ...pipeline.target import Checker

_STARTING_FIELDS = ("replicas", "minReplicas")  # what starts nodes: above the cap, an error


def machine_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset counts, not the host's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Limits:
    cpus: int
    workers_per_group: int  # unless the environment's policy.maxWorkersPerGroup says otherwise
    nodes: int  # Ray nodes (heads included) on this machine, over every local cluster of the daemon

    @classmethod
    def of_machine(cls, cpus: int | None = None) -> Limits:
        cpus = cpus or machine_cpus()
        return cls(cpus, max(4, 2 * cpus), max(8, 4 * cpus))

    def per_group(self, environment: EnvironmentSpec) -> tuple[int, str]:
        """The cap on one group's workers in this environment, and where it comes from."""
        if environment.max_workers_per_group is not None:
            return environment.max_workers_per_group, "spec.policy.maxWorkersPerGroup"
        return self.workers_per_group, (f"max(4, 2 per CPU) with {self.cpus} CPUs; "
                                        "spec.policy.maxWorkersPerGroup sets another")

    def nodes_reason(self) -> str:
        return (f"the local target's limit of {self.nodes} Ray nodes on this machine "
                f"(max(8, 4 per CPU) with {self.cpus} CPUs)")


def nodes_text(nodes: int) -> str:
    """'3 Ray nodes (a head and 2 workers)', '1 Ray node (a head)'."""
    if nodes == 1:
        return "1 Ray node (a head)"
    return f"{nodes} Ray nodes (a head and {nodes - 1} worker{'' if nodes == 2 else 's'})"


def cluster_nodes(spec: Mapping[str, Any]) -> int:
    """Ray nodes the local target starts for a RayCluster spec: the head and every group's workers."""
    return 1 + sum(desired_workers(group) for group in spec.get("workerGroupSpecs") or [])


def cluster_specs(doc: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(path, spec) of each RayCluster spec the object would start locally: a RayCluster's, a RayService's
    `rayClusterConfig`, a RayJob's `rayClusterSpec`, a RayCronJob's `jobTemplate.rayClusterSpec`."""
    pointer, spec = cluster_spec_path(str(doc.get("kind"))), cluster_spec(doc)
    return [(dotted(pointer), spec)] if spec or doc.get("kind") == "RayCluster" else []


def check(doc: Mapping[str, Any], c: Checker, environment: EnvironmentSpec, limits: Limits | None = None) -> None:
    """The local target's caps on every cluster the object would start (called on an object that passed the
    common checks, so the fields have their types)."""
    for path, spec in cluster_specs(doc):
        _cluster(spec, path, c, environment, limits or Limits.of_machine())


def _cluster(spec: Mapping[str, Any], path: str, c: Checker, environment: EnvironmentSpec, limits: Limits) -> None:
    cap, why = limits.per_group(environment)
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        hosts = group.get("numOfHosts", 1)
        for field in (*_STARTING_FIELDS, "maxReplicas"):
            value = group.get(field)
            if value is None or value * hosts <= cap:
                continue
            count = f"{value}" if hosts == 1 else f"{value} x numOfHosts {hosts} = {value * hosts} workers"
            where = f"{path}.workerGroupSpecs[{i}].{field}"
            if field in _STARTING_FIELDS:
                c.fail(where, f"{count} exceeds the local target's limit of {cap} workers per group ({why})")
            else:
                c.warn(where, f"{count} is above the local target's limit of {cap} workers per group ({why}): "
                       f"clamped to {cap // hosts} (maxReplicas only bounds the autoscaler)")
    if not c.errors and (nodes := cluster_nodes(spec)) > limits.nodes:
        c.fail(f"{path}.workerGroupSpecs", f"{nodes_text(nodes)} exceed {limits.nodes_reason()}")


CLAMPED = ("RayCluster", "RayService")  # the kinds whose worker bounds the local target reports (status, metrics)


def clamp(manifest: dict[str, Any], cap: int) -> dict[str, Any]:
    """A RayCluster or RayService manifest as the local target holds it: each worker group's `maxReplicas` at most
    `cap` workers (`cap // numOfHosts`). Other kinds, and clusters within the cap, are returned as they are; the
    workers started are the same either way (`replicas` and `minReplicas` are within the cap)."""
    if manifest.get("kind") not in CLAMPED or not any(
            _above(group, cap) for _, spec in cluster_specs(manifest) for group in spec.get("workerGroupSpecs") or []):
        return manifest
    out = copy.deepcopy(manifest)
    for _, spec in cluster_specs(out):
        for group in spec.get("workerGroupSpecs") or []:
            if _above(group, cap):
                group["maxReplicas"] = cap // group.get("numOfHosts", 1)
    return out


def _above(group: Mapping[str, Any], cap: int) -> bool:
    high = group.get("maxReplicas")
    return isinstance(high, int) and high * group.get("numOfHosts", 1) > cap
