"""Changes on the local target, as the KubeRay operator would make them: start, scale, restart and
stop Ray clusters; submit and stop job runs through the Ray Jobs API; record what was applied."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ...errors import PermanentError, RayGitopsError, TemporaryError
from ...model import Action, ObjectRef, Outcome, PlanItem, TERMINAL_JOB_STATUSES, job_submission_id
from ...pipeline import parse
from ...pipeline.target import ApplyContext
from .clusters import Clusters, template_hash
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
    runtime_env, _ = parse.text(spec.get("runtimeEnvYAML") or "{}", "", None, str(ref), "spec.runtimeEnvYAML")
    runtime_env = runtime_env or {}
    working_dir = runtime_env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        if materialize is None:
            raise PermanentError(f"{ref}: a scheduled run cannot take working_dir {working_dir} from Git on the "
                                 "local target; use a URI")
        runtime_env["working_dir"] = str(materialize(working_dir))
    resources = spec.get("entrypointResources")
    try:
        cluster.submit_job(run, spec["entrypoint"], runtime_env=runtime_env or None,
                           metadata={"ray-gitops/environment": environment, "ray-gitops/revision": revision,
                                     **(spec.get("metadata") or {})},
                           entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                           entrypoint_num_gpus=spec.get("entrypointNumGpus"),
                           entrypoint_resources=json.loads(resources) if resources else None)
    except (RayGitopsError, OSError) as exc:
        raise PermanentError(f"{ref}: submission {run} failed: {exc}") from exc
    return name, ephemeral


def delete(clusters: Clusters, store: ObjectStore, environment: str, ref: ObjectRef) -> None:
    """Stop what the object runs (a RayCluster's cluster; a RayJob's unfinished run, and its own cluster)."""
    record = store.load(environment, ref)
    if ref.kind == "RayCluster":
        clusters.stop(cluster_name(environment, ref.name))
    elif ref.kind == "RayJob" and record:
        cluster = clusters.get(record["cluster"])
        if cluster is not None and (record.get("status") or {}).get("jobStatus") not in TERMINAL_JOB_STATUSES:
            cluster.stop_job(record["submission_id"])
        if record.get("ephemeral"):
            clusters.stop(record["cluster"])
    elif ref.kind == "RayCronJob" and record:  # its runs go with it, as KubeRay's are garbage collected
        for run, info in (record.get("runs") or {}).items():
            cluster = clusters.get(info["cluster"])
            if cluster is not None and (info.get("status") or {}).get("jobStatus") not in TERMINAL_JOB_STATUSES:
                cluster.stop_job(run)
            if info.get("ephemeral"):
                clusters.stop(info["cluster"])
    store.forget(environment, ref)
