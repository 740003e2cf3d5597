"""The object kinds ray-gitops handles, once: for each its API version and plural, apply order, where its
RayClusterSpec (and RayJob spec) lives, how KubeRay takes a change to it, and what needs a feature gate or a
newer KubeRay; plus the KubeRay helpers several stages share (worker groups, the autoscaler's fields).

Plain facts and pure functions, below the pipeline and the Kubernetes access layer (`kubeapi` builds its
API paths from `KINDS`); validation, diff, planner and both targets look kinds up here.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import CONCURRENCY_ANNOTATION, STARTING_DEADLINE_ANNOTATION, Manifest

RAY_API_VERSION = "ray.io/v1"
ORIGINATED_FROM_LABEL = "ray.io/originated-from-crd"  # KubeRay's label on a RayCluster a RayJob/RayService made
AUTOSCALER_FIELDS = ("replicas", "scaleStrategy")  # of each worker group, the autoscaler's with in-tree autoscaling
UNKNOWN_ORDER = 9  # where a kind outside `KINDS` sorts in a plan: after every known one


class Changes(enum.Enum):
    """How a change to an existing object of a kind takes effect."""

    APPLY = "apply"  # every change applies as it is (a RayCronJob's to its next runs)
    IN_PLACE = "in-place"  # `IN_PLACE` fields apply in place; others reach only new pods (pending restart)
    RERUN = "rerun"  # the operator ignores spec edits but `suspend`: a changed spec is a new run (delete + create)


@dataclass(frozen=True)
class FeatureGate:
    """A KubeRay operator feature gate that is off by default (KubeRay 1.6): what needs it is the kind itself
    (`pointer` "") or a field at `pointer`, with `value` (None: any value)."""

    gate: str
    pointer: str = ""
    value: str | None = None


@dataclass(frozen=True)
class Kind:
    """One object kind Git may hold."""

    name: str
    api_version: str
    plural: str
    order: int  # apply order (deletes go the other way): what others refer to comes first
    changes: Changes
    cluster_spec: str = ""  # JSON pointer of its RayClusterSpec ("" for none)
    job_spec: str = ""  # JSON pointer of its RayJob spec ("" for none)
    makes_clusters: bool = False  # the operator makes RayClusters for it (labelled ORIGINATED_FROM_LABEL)
    string_maps: tuple[str, ...] = ()  # its top-level map[string]string fields
    gates: tuple[FeatureGate, ...] = ()
    newer_fields: tuple[tuple[str, str], ...] = ()  # (pointer, the KubeRay version that has it; the tests pin 1.6)
    # (annotation only the local target honours, the missing KubeRay field)
    local_only: tuple[tuple[str, str], ...] = ()


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("RayCluster", RAY_API_VERSION, "rayclusters", 1, Changes.IN_PLACE, cluster_spec="/spec"),
    Kind("RayJob", RAY_API_VERSION, "rayjobs", 3, Changes.RERUN, cluster_spec="/spec/rayClusterSpec",
         job_spec="/spec", makes_clusters=True),
    Kind("RayService", RAY_API_VERSION, "rayservices", 2, Changes.IN_PLACE, cluster_spec="/spec/rayClusterConfig",
         makes_clusters=True,
         gates=(FeatureGate("RayServiceIncrementalUpgrade", "/spec/upgradeStrategy/type",
                            "NewClusterWithIncrementalUpgrade"),)),
    Kind("RayCronJob", RAY_API_VERSION, "raycronjobs", 3, Changes.APPLY,
         cluster_spec="/spec/jobTemplate/rayClusterSpec", job_spec="/spec/jobTemplate",
         gates=(FeatureGate("RayCronJob"),), newer_fields=(("/spec/timeZone", "KubeRay 1.7"),),
         local_only=((STARTING_DEADLINE_ANNOTATION, "startingDeadlineSeconds"),
                     (CONCURRENCY_ANNOTATION, "concurrencyPolicy"))),
    Kind("ConfigMap", "v1", "configmaps", 0, Changes.APPLY, string_maps=("data", "binaryData")),
    Kind("Secret", "v1", "secrets", 0, Changes.APPLY, string_maps=("data", "stringData")),
)}
NAMES = frozenset(KINDS)

# Changed fields (as `diff.changed_paths` names them) that KubeRay applies to a running RayCluster or RayService:
# labels and annotations, Serve's config, suspend, autoscaling, and a worker group's scale (or a whole group).
IN_PLACE = re.compile(r"(metadata\.(labels|annotations)(\..*)?"
                      r"|spec\.serveConfigV2"
                      r"|spec(\.rayClusterSpec|\.rayClusterConfig)?\.(suspend|enableInTreeAutoscaling|autoscalerOptions(\..*)?)"
                      r"|spec(\.rayClusterSpec|\.rayClusterConfig)?\.workerGroupSpecs\[[^]]+\]"
                      r"(\.(replicas|minReplicas|maxReplicas|scaleStrategy|suspend|idleTimeoutSeconds)(\..*)?)?)")


def order(kind: str) -> int:
    """A kind's place in the apply order (`UNKNOWN_ORDER` for one outside `KINDS`)."""
    found = KINDS.get(kind)
    return found.order if found else UNKNOWN_ORDER


def changes(kind: str) -> Changes:
    """How a change to an existing object of `kind` takes effect (one outside `KINDS`: as a RayCluster's)."""
    found = KINDS.get(kind)
    return found.changes if found else Changes.IN_PLACE


def dotted(pointer: str) -> str:
    """A JSON pointer as a field path for people: `/spec/rayClusterSpec` -> `spec.rayClusterSpec`."""
    return pointer.strip("/").replace("/", ".")


def value_at(manifest: Any, pointer: str) -> Any:
    """The value at a JSON pointer of plain keys (None when a step is missing or not a mapping)."""
    node = manifest
    for key in pointer.strip("/").split("/"):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def cluster_spec_path(kind: str) -> str:
    """The JSON pointer of a kind's RayClusterSpec ("" when it has none)."""
    found = KINDS.get(kind)
    return found.cluster_spec if found else ""


def cluster_spec(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The RayClusterSpec inside a RayCluster, RayJob, RayService or RayCronJob ({} when absent)."""
    pointer = cluster_spec_path(str(manifest.get("kind")))
    node = value_at(manifest, pointer) if pointer else None
    return node if isinstance(node, dict) else {}


def job_spec(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The RayJob spec of a RayJob or a RayCronJob (its `jobTemplate`; {} when absent or another kind)."""
    found = KINDS.get(str(manifest.get("kind")))
    node = value_at(manifest, found.job_spec) if found and found.job_spec else None
    return node if isinstance(node, dict) else {}


def worker_groups(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The worker groups of a RayCluster, RayJob or RayService by `groupName` (the key everything uses:
    the autoscaler, the metrics, the local target)."""
    return {str(g.get("groupName")): g for g in cluster_spec(manifest).get("workerGroupSpecs") or []
            if isinstance(g, dict)}


def autoscaler_pointers(manifest: Manifest) -> list[str]:
    """JSON pointers (with `*`) that the Ray autoscaler owns in this object, if it is enabled."""
    base = cluster_spec_path(str(manifest.get("kind")))
    if not base or cluster_spec(manifest).get("enableInTreeAutoscaling") is not True:
        return []
    return [f"{base}/workerGroupSpecs/*/{name}" for name in AUTOSCALER_FIELDS]


def submitter_command(spec: Mapping[str, Any]) -> bool:
    """A RayJob spec whose submitter runs a command of its own (K8sJobMode with a `submitterPodTemplate` whose
    first container sets `command`: KubeRay then runs it instead of `ray job submit -- <entrypoint>`)."""
    if spec.get("submissionMode", "K8sJobMode") != "K8sJobMode":
        return False
    template = spec.get("submitterPodTemplate")
    pod = template.get("spec") if isinstance(template, dict) else None
    containers = pod.get("containers") if isinstance(pod, dict) else None
    return bool(isinstance(containers, list) and containers and isinstance(containers[0], dict)
                and containers[0].get("command"))


def operator_parent(labels: Mapping[str, Any]) -> str:
    """The kind whose object the KubeRay operator made this RayCluster for ("" when none says so)."""
    parent = labels.get(ORIGINATED_FROM_LABEL)
    found = KINDS.get(parent) if isinstance(parent, str) else None
    return found.name if found and found.makes_clusters else ""


def gate_warnings(manifest: Manifest) -> tuple[str, ...]:
    """Warnings for what the KubeRay operator ignores unless a feature gate is on, unless it is new enough, or at
    all (an annotation only the local target honours)."""
    kind = KINDS.get(str(manifest.get("kind")))
    if kind is None:
        return ()
    out = []
    for gate in kind.gates:
        found = value_at(manifest, gate.pointer) if gate.pointer else kind.name
        if found is not None and (gate.value is None or found == gate.value):
            what = f"{dotted(gate.pointer)}: {gate.value}" if gate.pointer else kind.name
            out.append(f"{what} needs the KubeRay operator's feature gate {gate.gate} (alpha, off by default: "
                       f"--feature-gates={gate.gate}=true)")
    for pointer, version in kind.newer_fields:
        if value_at(manifest, pointer) is not None:
            out.append(f"{dotted(pointer)} needs {version}; an older CRD drops it")
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    for annotation, field in kind.local_only:
        if annotation in annotations:
            out.append(f"{annotation} is honoured on the local target only: KubeRay's {kind.name} has no {field}")
    return tuple(out)
