"""Helpers for tests of `KubernetesTarget` on the real API server: Git objects as the render stage
makes them, plan and apply one object, read and patch live objects as other field managers."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import (
    ENVIRONMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    REVISION_ANNOTATION,
    Action,
    DesiredObject,
    EnvironmentSpec,
    LiveObject,
    ObjectRef,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    TargetSpec,
)
from reconciler.pipeline import planner
from reconciler.pipeline.target import ApplyContext
from reconciler.targets.kubernetes.options import KubernetesOptions
from reconciler.targets.kubernetes.target import KubernetesTarget
from tests.eventually import eventually

TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "kube"
ENV = "t"
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}


def load(name: str) -> dict[str, Any]:
    """A YAML document from tests/testdata/kube."""
    return yaml.safe_load((TESTDATA / name).read_text())


def desired(doc: dict[str, Any], namespace: str, document: int = 0, revision: str = "r1") -> DesiredObject:
    """`doc` as render() hands it over: namespaced, with the ownership labels and revision annotation."""
    doc = copy.deepcopy(doc)
    meta = doc.setdefault("metadata", {})
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: ENV}
    meta["annotations"] = {**(meta.get("annotations") or {}), REVISION_ANNOTATION: revision}
    file = f"environments/{ENV}/{doc['kind'].lower()}-{meta['name']}.yaml"
    return DesiredObject(ObjectRef.of(doc, namespace), doc, file, document)


class Kit:
    """One target on the test control plane, in one namespace, with its metrics."""

    def __init__(self, plane: Any, namespace: str, ignore: tuple[str, ...] = (), **options: Any) -> None:
        self.namespace, self.ignore = namespace, ignore
        self.metrics = Metrics(CollectorRegistry())
        self.api_client = plane.api_client()
        self.options = KubernetesOptions(namespace, **options)
        self.target = KubernetesTarget(self.options, self.metrics, api_client=self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.context = ApplyContext(ENV, "r1", lambda path: Path(path), self.options, ignore)

    def close(self) -> None:
        self.target.close(workloads=True)
        self.api_client.close()

    def environment(self, *objects: DesiredObject) -> RenderedEnvironment:
        spec = EnvironmentSpec(ENV, TargetSpec("kubernetes", self.options), ignore=self.ignore)
        return RenderedEnvironment(spec, tuple(objects), "r1")

    # -- the reconcile steps, one object at a time ---------------------------------------------------
    def observe(self, *objects: DesiredObject) -> dict[ObjectRef, LiveObject]:
        return self.target.observe(self.environment(*objects), {o.ref for o in objects}, frozenset()).live

    def caught_up(self, obj: DesiredObject) -> None:
        """Wait until the target's cache shows the object's current version: a change made by someone
        else reaches the cache through the watch, a moment later."""
        current = self.get(obj.ref.kind, obj.ref.name)
        assert current is not None
        version = current["metadata"]["resourceVersion"]

        def seen() -> bool:
            live = self.observe(obj).get(obj.ref)
            return live is not None and live.manifest["metadata"]["resourceVersion"] == version
        eventually(seen, 10, 0.05, f"the cache to show {obj.ref} at resourceVersion {version}")

    def plan(self, obj: DesiredObject) -> PlanItem:
        env = self.environment(obj)
        live = self.target.observe(env, {obj.ref}, frozenset()).live
        [item] = planner.plan(env, live, frozenset(), {}, expected=self.target.expected(env, live))
        return item

    def apply(self, obj: DesiredObject | None, action: Action, ref: ObjectRef | None = None) -> Outcome:
        ref = ref or (obj.ref if obj else None)
        assert ref is not None
        return self.target.apply(PlanItem(ref, action, "test", obj), self.context)

    def sync(self, obj: DesiredObject) -> tuple[PlanItem, Outcome | None]:
        """Plan `obj` and carry the plan out, as one reconcile would."""
        item = self.plan(obj)
        if item.action in (Action.NOOP, Action.SKIP):
            return item, None
        return item, self.target.apply(item, self.context)

    # -- the cluster as it is --------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            if kind in ("ConfigMap", "Secret"):
                read = self.core.read_namespaced_config_map if kind == "ConfigMap" else self.core.read_namespaced_secret
                return self.api_client.sanitize_for_serialization(read(name, self.namespace))
            return self.custom.get_namespaced_custom_object("ray.io", "v1", self.namespace, PLURALS[kind], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def json_patch(self, kind: str, name: str, ops: list[dict[str, Any]], manager: str) -> None:
        """A JSON patch (a non-apply Update operation), as the Ray autoscaler sends it."""
        self.custom.patch_namespaced_custom_object("ray.io", "v1", self.namespace, PLURALS[kind], name, ops,
                                                   field_manager=manager, _content_type="application/json-patch+json")

    def server_side_apply(self, body: dict[str, Any], manager: str, force: bool = False) -> None:
        """Another field manager's server-side apply."""
        self.custom.patch_namespaced_custom_object(
            "ray.io", "v1", self.namespace, PLURALS[body["kind"]], body["metadata"]["name"], body,
            field_manager=manager, force=force, _content_type="application/apply-patch+yaml", _preload_content=False)

    def requests(self, verb: str) -> float:
        return self.metrics.registry.get_sample_value("ray_gitops_kube_requests_total", {"verb": verb}) or 0.0

    def conflicts(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value("ray_gitops_apply_conflicts_total",
                                                      {"environment": ENV, "kind": kind}) or 0.0


def managers(obj: dict[str, Any], field: str | None = None) -> dict[str, str]:
    """manager -> operation of each managedFields entry (that owns `field` under spec, if given)."""
    out = {}
    for entry in obj["metadata"].get("managedFields") or []:
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if field is None or f"f:{field}" in spec:
            out[entry["manager"]] = entry["operation"]
    return out


def worker(group: dict[str, Any]) -> dict[str, Any]:
    return {k: group.get(k) for k in ("replicas", "minReplicas", "maxReplicas", "scaleStrategy")}
