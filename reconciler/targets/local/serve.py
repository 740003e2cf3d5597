"""Ray Serve on a local cluster: a RayService's `serveConfigV2` as the local target deploys it, through Serve's
declarative REST API on the cluster's dashboard (`PUT /api/serve/applications/`, with the cluster's token), and
the applications' statuses read back (`GET`) in KubeRay's RayService status shape.

Used by `apply` (deploy), `control` (is a new cluster ready to take the traffic?) and `observe` (statuses, reads
only). What the local target owns in the config: Serve's HTTP proxy listens on 127.0.0.1 on a port of the cluster's
own, on the head only (every node shares this machine's loopback), and an application's relative `working_dir` is
the directory exported from the applied revision (`local://`: every node is on this machine).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...pipeline.target import yaml_field
from .runtime import LocalRayCluster


def cluster_name(environment: str, name: str, spec: dict[str, Any], revision: str) -> str:
    """A new local cluster of a RayService (as KubeRay's `<name>-raycluster-<suffix>`): one name per
    `rayClusterConfig` and revision, so a retry of the same apply starts the same cluster again (never a second
    one), and a later revision never takes the name of a cluster still stopping."""
    digest = hashlib.sha256(json.dumps([spec, revision], sort_keys=True).encode()).hexdigest()[:6]
    return f"{environment}_{name}-{digest}"  # `_`: in no environment or object name (see observe.cluster_name)


def config(text: str, port: int, materialize: Callable[[str], Path]) -> dict[str, Any]:
    """`serveConfigV2` as the local target deploys it: its own HTTP options (127.0.0.1:`port`, the head's proxy
    only) and each application's relative `working_dir` exported from the revision."""
    value = yaml_field(text)  # a mapping: validation saw to it
    out = {**value, "proxy_location": "HeadOnly",
           "http_options": {**(value.get("http_options") or {}), "host": "127.0.0.1", "port": port}}
    applications = []
    for app in value.get("applications") or []:
        env = dict(app.get("runtime_env") or {})
        working_dir = env.get("working_dir")
        if isinstance(working_dir, str) and "://" not in working_dir:
            env["working_dir"] = f"local://{materialize(working_dir)}"
        applications.append({**app, **({"runtime_env": env} if env else {})})
    return {**out, "applications": applications}


def deploy(cluster: LocalRayCluster, ref: str, body: dict[str, Any]) -> None:
    """Deploy the whole multi-application config on the cluster (declarative: applications not in it are
    removed; Serve starts with the first one)."""
    cluster.dashboard.deploy_serve(ref, body)


def service_status(cluster: LocalRayCluster) -> dict[str, Any]:
    """KubeRay's `activeServiceStatus`/`pendingServiceStatus` of a cluster, from Serve (reads only):
    `{rayClusterName, applicationStatuses: {app: {status, message, serveDeploymentStatuses: {name: {status,
    message}}}}}`, and `numServeEndpoints` (Serve's healthy HTTP proxies: 1 once Serve runs)."""
    details = cluster.dashboard.serve_details()
    applications = {name: {**_status(app), "serveDeploymentStatuses": {
        deployment: _status(entry) for deployment, entry in (app.get("deployments") or {}).items()}}
                    for name, app in (details.get("applications") or {}).items()}
    proxies = sum(1 for p in (details.get("proxies") or {}).values() if p.get("status") == "HEALTHY")
    return {"rayClusterName": cluster.name, "applicationStatuses": applications, "numServeEndpoints": proxies}


def ready(status: dict[str, Any]) -> bool:
    """Every application RUNNING (KubeRay's test before it switches the traffic to a new cluster)."""
    applications = status.get("applicationStatuses") or {}
    return bool(applications) and all(a.get("status") == "RUNNING" for a in applications.values())


def _status(entry: dict[str, Any]) -> dict[str, Any]:
    """`{status, message}` of a Serve application or deployment, as KubeRay writes it (no empty message)."""
    return {"status": entry.get("status", ""), **({"message": entry["message"]} if entry.get("message") else {})}


def clusters_of(record: dict[str, Any]) -> list[str]:
    """Every local cluster a RayService's record names: active, pending and those stopping after a switch."""
    entries = [record.get("active"), record.get("pending"), *(record.get("retiring") or [])]
    return [entry["cluster"] for entry in entries if entry]
