"""Observe on Kubernetes: live objects, their status and ready workers, read from informer caches.

Called by `KubernetesTarget.observe`. Which collections are watched (and with which label
selector) is decided here; reading them costs no request once the caches are started.
Ready workers per group, and the age of each group's oldest Pod (what a pending restart waits for),
come from the Pods KubeRay labels `ray.io/cluster` and `ray.io/group` (the head's group is `headgroup`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ...kubeapi import RESOURCES, Resource
from ...kuberay import cluster_spec_path, worker_groups
from ...model import MANAGED_BY_LABEL, MANAGED_BY_VALUE, LiveObject, Manifest, ObjectRef, parse_time
from ...pipeline.target import hide_secret_values
from .cache import Transform

CLUSTER_LABEL, GROUP_LABEL, NODE_TYPE_LABEL = "ray.io/cluster", "ray.io/group", "ray.io/node-type"
RAY_POD_SELECTOR = f"{CLUSTER_LABEL},{GROUP_LABEL}"
# Objects from Git: only ours, so a cluster-wide cache never holds other teams' objects or secrets. An
# unlabelled object of the same name therefore looks absent, and the create (server-side apply) adopts
# it (or reports the fields another manager owns).
OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"


CRON_LABEL = "ray.io/cronjob-name"  # on the RayJobs a RayCronJob makes (KubeRay 1.6)
CRON_RUNS = "CronRun"  # the cache of those RayJobs


def cache_of(kind: str) -> tuple[Resource, str, Transform | None]:
    """What the cache named `kind` holds: (resource, label selector, what is kept of each object). Objects
    from Git: only ours; Ray Pods (head and workers): KubeRay's; a RayCronJob's runs: its RayJobs, summed up."""
    if kind == "Pod":
        return RESOURCES["Pod"], RAY_POD_SELECTOR, pod_summary
    if kind == CRON_RUNS:
        return RESOURCES["RayJob"], CRON_LABEL, run_summary
    return RESOURCES[kind], OWNED_SELECTOR, None


def run_summary(job: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a RayJob a RayCronJob made: identity, its RayCronJob, its run's status."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    return {"metadata": {k: meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion")},
            "cronjob": (meta.get("labels") or {}).get(CRON_LABEL),
            "status": {k: status.get(k) for k in ("jobId", "jobStatus", "startTime", "endTime")}}


def pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a Ray Pod: identity, cluster, group, head or worker, creation time, Ready."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = not meta.get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return {"metadata": {k: meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion")},
            "cluster": labels.get(CLUSTER_LABEL), "group": labels.get(GROUP_LABEL),
            "head": labels.get(NODE_TYPE_LABEL) == "head", "created": parse_time(meta.get("creationTimestamp")),
            "ready": ready}


def ready_workers(pods: Iterable[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """(namespace, cluster, group) -> Ready worker pods."""
    return Counter((p["metadata"]["namespace"], p["cluster"], p["group"]) for p in pods
                   if p["ready"] and not p.get("head"))


def oldest_pods(pods: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(namespace, cluster, group) -> creation time of its oldest Pod (head and workers)."""
    oldest: dict[tuple[str, str, str], float] = {}
    for pod in pods:
        key, created = (pod["metadata"]["namespace"], pod["cluster"], pod["group"]), pod.get("created")
        if created is not None:
            oldest[key] = min(created, oldest.get(key, created))
    return oldest


def ray_cluster_name(manifest: Manifest) -> str | None:
    """The RayCluster whose pods serve this object: itself, a RayJob's or a RayService's active one."""
    kind, status = manifest.get("kind"), manifest.get("status") or {}
    if kind == "RayCluster":
        return str(manifest["metadata"]["name"])
    if kind == "RayJob":
        return status.get("rayClusterName") or None
    if kind == "RayService":
        return (status.get("activeServiceStatus") or {}).get("rayClusterName") or None
    return None


def live_object(ref: ObjectRef, manifest: Manifest, ready: Counter[tuple[str, str, str]] | None,
                oldest: dict[tuple[str, str, str], float] | None = None) -> LiveObject:
    """A LiveObject from a manifest the cache handed out (each `Informer.get` decodes a new one, so it is the
    caller's own); `ready` and `oldest` are None when the Pods cannot be read."""
    workers: dict[str, int] = {}
    nodes: dict[str, float] | None = None
    cluster = ray_cluster_name(manifest) if ready is not None and cluster_spec_path(ref.kind) else None
    if cluster and ready is not None:
        for name in worker_groups(manifest):
            workers[name] = ready[(ref.namespace, cluster, name)]
    if cluster and oldest is not None:
        nodes = {group: created for (namespace, name, group), created in oldest.items()
                 if (namespace, name) == (ref.namespace, cluster)}
    manifest = hide_secret_values(manifest)  # no Secret value leaves the cache
    return LiveObject(ref, manifest, manifest.get("status") or {}, workers, nodes)
