"""Changes on the local target, as the KubeRay operator would make them: start, scale, restart and
stop Ray clusters; submit and stop job runs through the Ray Jobs API; start a RayService's clusters and
deploy its Serve applications; record what was applied."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import PermanentError, RayGitopsError, TemporaryError
from ...model import TERMINAL_JOB_STATUSES, Action, ObjectRef, Outcome, PlanItem, job_submission_id
from ...pipeline.target import ApplyContext, yaml_field
from . import serve
from .clusters import Clusters, template_hash
from .endpoints import Endpoints
from .nodes import free_port
from .observe import cluster_name
from .store import ObjectStore


def raycluster(clusters: Clusters, store: ObjectStore, environment: str, item: PlanItem,
               manifest: dict[str, Any]) -> Outcome:
    name, spec = cluster_name(environment, item.ref.name), manifest["spec"]
    old = store.load(environment, item.ref)
    store.save(environment, item.ref, {"manifest": manifest})
    if item.action in (Action.CREATE, Action.RECREATE):
        clusters.start(name, spec)
        return Outcome.CREATED if item.action == Action.CREATE else Outcome.RECREATED
    cluster = clusters.get(name)
    if cluster is None:
        raise TemporaryError(f"{item.ref}: Ray cluster {name} is not running")
    recreate = (spec.get("upgradeStrategy") or {}).get("type") == "Recreate"
    if old and recreate and template_hash(old["manifest"]["spec"]) != template_hash(spec):
        clusters.start(name, spec)
        return Outcome.RECREATED
    clusters.scale(cluster, spec)
    return Outcome.CONFIGURED


def rayservice(clusters: Clusters, store: ObjectStore, endpoints: Endpoints, item: PlanItem, manifest: dict[str, Any],
               context: ApplyContext) -> Outcome:
    """What KubeRay's RayService controller does with a change. A new RayService, or one whose active cluster is
    gone, starts a cluster and deploys `serveConfigV2` on it. A change to the cluster spec (beyond worker counts)
    starts a pending cluster with the applications (`upgradeStrategy` NewCluster, the default), to which `control`
    switches the traffic once they all run; with `None` it is only recorded (pending restart). Anything else
    (`serveConfigV2` alone, worker counts) is applied in place, to the pending cluster during an upgrade, else to
    the active one. The record names each cluster before it starts, so none is ever lost track of."""
    environment, ref = context.environment, item.ref
    record = {**(store.load(environment, ref) or {}), "manifest": manifest}
    store.save(environment, ref, record)
    spec = manifest["spec"]
    wanted, text = spec["rayClusterConfig"], spec.get("serveConfigV2") or ""
    active, pending = record.get("active"), record.get("pending")
    outcome = Outcome.CONFIGURED
    if item.action == Action.RECREATE or active is None or clusters.get(active["cluster"]) is None:
        for name in serve.clusters_of(record):  # new, recreated, or its cluster is gone: start over (same address)
            clusters.stop(name)
        record = {"manifest": manifest, "port": record.get("port")}
        _serve(clusters, store, environment, ref, record, "active", context)
        outcome = {Action.CREATE: Outcome.CREATED, Action.RECREATE: Outcome.RECREATED}.get(item.action, outcome)
    elif template_hash(wanted) != active["template"] and upgrade_strategy(spec) != "None":
        if pending and pending["template"] == template_hash(wanted) and clusters.get(pending["cluster"]):
            _update(clusters, pending, ref, text, wanted, context)
        else:
            if pending:
                clusters.stop(pending["cluster"])
            _serve(clusters, store, environment, ref, record, "pending", context)
    else:  # in place; a pending cluster no longer wanted (Git went back to the active one's spec) stops
        if pending:
            clusters.stop(pending["cluster"])
            record.pop("pending")
        _update(clusters, record["active"], ref, text, wanted, context)
    endpoint = endpoints.open((environment, ref.name), record.get("port"))
    endpoint.route(record["active"]["port"])
    store.save(environment, ref, {**record, "port": endpoint.port})
    return outcome


def upgrade_strategy(spec: dict[str, Any]) -> str:
    """A RayService's `upgradeStrategy.type`: NewCluster by default. NewClusterWithIncrementalUpgrade shifts
    traffic step by step through a Gateway on Kubernetes; the local target has none and switches at once."""
    return (spec.get("upgradeStrategy") or {}).get("type") or "NewCluster"


def _serve(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef, record: dict[str, Any],
           role: str, context: ApplyContext) -> None:
    """Start a new cluster of the RayService as its `role` (active or pending) and deploy its applications; the
    cluster is in the record before it starts."""
    spec = record["manifest"]["spec"]
    wanted = spec["rayClusterConfig"]
    entry = {"cluster": serve.cluster_name(environment, ref.name, wanted, context.revision), "spec": wanted,
             "template": template_hash(wanted), "port": free_port(), "config": ""}
    record[role] = entry
    store.save(environment, ref, record)
    clusters.start(entry["cluster"], wanted)
    _update(clusters, entry, ref, spec.get("serveConfigV2") or "", wanted, context)
    store.save(environment, ref, record)


def _update(clusters: Clusters, entry: dict[str, Any], ref: ObjectRef, text: str, wanted: dict[str, Any],
            context: ApplyContext) -> None:
    """Scale a RayService's cluster to `wanted` (new nodes get its template, as KubeRay's) and deploy `text` on it
    unless it runs that config already."""
    cluster = clusters.get(entry["cluster"])
    if cluster is None:
        raise TemporaryError(f"{ref}: Ray cluster {entry['cluster']} is not running")
    clusters.scale(cluster, wanted)
    entry["spec"] = wanted
    if text and text != entry["config"]:
        serve.deploy(cluster, str(ref), serve.config(text, entry["port"], context.materialize))
        entry["config"] = text


def rayjob(clusters: Clusters, store: ObjectStore, item: PlanItem, manifest: dict[str, Any],
           context: ApplyContext) -> Outcome:
    """Submit the run (on the cluster `clusterSelector` names, or on its own cluster from `rayClusterSpec`);
    an edit that KubeRay applies in place (suspend, labels) only updates the record."""
    environment = context.environment
    old = store.load(environment, item.ref)
    if item.action == Action.UPDATE and old:
        store.save(environment, item.ref, {**old, "manifest": manifest})
        return Outcome.CONFIGURED
    if item.action == Action.RECREATE and old:
        delete(clusters, store, environment, item.ref)
    spec, run = manifest["spec"], job_submission_id(environment, item.ref.name, manifest)
    name, ephemeral = submit(clusters, item.ref, environment, spec, run, context.revision, context.materialize)
    store.save(environment, item.ref, {"manifest": manifest, "submission_id": run, "cluster": name,
                                       "ephemeral": ephemeral})
    return Outcome.SUBMITTED


def submit(clusters: Clusters, ref: ObjectRef, environment: str, spec: dict[str, Any], run: str, revision: str,
           materialize: Callable[[str], Path] | None) -> tuple[str, bool]:
    """Submit run `run` of a RayJob spec (also a RayCronJob's `jobTemplate`) through the Jobs API, on the cluster
    `clusterSelector` names or on its own cluster from `rayClusterSpec`; (cluster name, whether it is its own).
    Submitting the same run twice does nothing (the submission id is the run id)."""
    if "clusterSelector" in spec:
        name, ephemeral = cluster_name(environment, spec["clusterSelector"]["ray.io/cluster"]), False
        cluster = clusters.get(name)
        if cluster is None:
            raise TemporaryError(f"{ref}: RayCluster {spec['clusterSelector']['ray.io/cluster']} "
                                 "selected by clusterSelector is not running")
    else:
        name, ephemeral = cluster_name(environment, run), True  # deterministic: a retry after a crash adopts it
        cluster = clusters.get(name) or clusters.start(name, spec["rayClusterSpec"])
    runtime_env = yaml_field(spec.get("runtimeEnvYAML") or "{}") or {}
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        if materialize is None:
            raise PermanentError(f"{ref}: a scheduled run cannot take working_dir {working_dir} from Git on the "
                                 "local target; use a URI")
        runtime_env["working_dir"] = str(materialize(working_dir))
    resources = spec.get("entrypointResources")
    try:
        cluster.dashboard.submit_job(run, spec["entrypoint"], runtime_env=runtime_env or None,
                           metadata={"ray-gitops/environment": environment, "ray-gitops/revision": revision,
                                     **(spec.get("metadata") or {})},
                           entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                           entrypoint_num_gpus=spec.get("entrypointNumGpus"),
                           entrypoint_resources=json.loads(resources) if resources else None)
    except (RayGitopsError, OSError) as exc:
        raise PermanentError(f"{ref}: submission {run} failed: {exc}") from exc
    return name, ephemeral


def delete(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef) -> None:
    """Stop what the object runs (a RayCluster's cluster; a RayService's clusters; a RayJob's unfinished run, and
    its own cluster)."""
    record = store.load(environment, ref)
    if ref.kind == "RayCluster":
        clusters.stop(cluster_name(environment, ref.name))
    elif ref.kind == "RayService":
        for name in serve.clusters_of(record or {}):
            clusters.stop(name)
    elif ref.kind == "RayJob" and record:
        cluster = clusters.get(record["cluster"])
        if cluster is not None and (record.get("status") or {}).get("jobStatus") not in TERMINAL_JOB_STATUSES:
            cluster.dashboard.stop_job(record["submission_id"])
        if record.get("ephemeral"):
            clusters.stop(record["cluster"])
    elif ref.kind == "RayCronJob" and record:  # its runs go with it, as KubeRay's are garbage collected
        for run, info in (record.get("runs") or {}).items():
            cluster = clusters.get(info["cluster"])
            if cluster is not None and (info.get("status") or {}).get("jobStatus") not in TERMINAL_JOB_STATUSES:
                cluster.dashboard.stop_job(run)
            if info.get("ephemeral"):
                clusters.stop(info["cluster"])
    store.forget(environment, ref)
