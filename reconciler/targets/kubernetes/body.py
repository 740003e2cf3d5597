"""What the Kubernetes target sends: the server-side apply body of one desired object.

Used by apply (the real apply) and dryrun (expected()), so both send the same body. Three rules:
a RayJob carries `spec.jobId` = its submission id; a live RayJob of the same run keeps its live
spec (only `suspend` and metadata come from Git); and with `enableInTreeAutoscaling` an existing
object's worker groups carry the live `replicas`/`scaleStrategy` (never Git's), guarded by the
live resourceVersion. Pure functions: no API access.

Every body carries the fingerprint of what Git asked for (`gitops.ray.io/applied`: a hash of the desired
object without its revision annotation, the environment's `ignore` pointers and a RayJob's run id). A live
object that carries the fingerprint of the body we would send now, and that no one but us has written since
(every managedFields entry ours, or the status subresource's), is what that apply would store: its live-derived
parts (a run's spec, the autoscaler's fields, ignored fields) are ours too. `dryrun` then needs no request (a
daemon restarted on 1,000 synced environments sends no dry-run for them).

Why a RayJob of the same run keeps its live spec: the run id is the hash of Git's spec, so equal
ids mean Git has not changed it, and KubeRay ignores RayJob spec edits anyway. KubeRay (1.6.2)
adds its finalizer with an update that writes the whole spec back: it takes over the atomic
`rayClusterSpec.workerGroupSpecs` and `headGroupSpec.template.metadata`, now spelled with empty
`scaleStrategy: {}` and `metadata: {}`. Git's spelling would then differ from the live one (a
drift that recreated the run every cycle), and a non-forced apply of it would be refused with a
409 conflict with `kuberay-operator`. With the live values, nothing differs and nothing conflicts.

Why carry the live values instead of omitting them: KubeRay's `workerGroupSpecs` has no
`x-kubernetes-list-type`, so server-side apply treats it as one atomic field. Omitting `replicas`
from it sets the whole list to one without replicas (the CRD default 0 comes back), and the
autoscaler's JSON patch makes it the owner of the whole list (checked on kube-apiserver 1.37).
"""
from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ...kuberay import AUTOSCALER_FIELDS, autoscaler_pointers, cluster_spec, cluster_spec_path, worker_groups
from ...model import APPLIED_ANNOTATION, REVISION_ANNOTATION, DesiredObject, Manifest

FORCE_ANNOTATION = "gitops.ray.io/force"


def apply_body(environment: str, desired: DesiredObject, live: Manifest | None,
               ignore: tuple[str, ...] = ()) -> Manifest:
    """The apply body of `desired`, given the live object (None: it is being created) and the environment's
    `ignore` pointers (an existing object keeps its live values there: ignored is never compared nor reverted)."""
    run = desired.run_id(environment) if desired.ref.kind == "RayJob" else ""
    mark = fingerprint(desired.manifest, ignore, run)
    if live is not None and (ignore or carries_live_scale(desired, live)):
        body = copy.deepcopy(desired.manifest)  # changed deep inside below
    else:  # only the top level, metadata and spec change: a copy of those (a deep one was a twentieth of a sync)
        body = {**desired.manifest}
        for part in ("metadata", "spec"):
            if isinstance(body.get(part), dict):
                body[part] = {**body[part]}
    if live is not None:
        for pointer in ignore:
            keep_live(body, live, pointer)
    if run:
        body.setdefault("spec", {})["jobId"] = run
        if same_run(live, run):
            assert live is not None
            git_spec, body["spec"] = body["spec"], copy.deepcopy(live["spec"])
            if "suspend" in git_spec:
                body["spec"]["suspend"] = git_spec["suspend"]
    if carries_live_scale(desired, live):
        assert live is not None
        live_groups = worker_groups(live)
        for name, group in worker_groups(body).items():
            current = live_groups.get(name)
            if current is None:
                continue  # a group new in Git starts from Git's replicas
            for name in AUTOSCALER_FIELDS:
                if name in current:
                    group[name] = copy.deepcopy(current[name])
                else:
                    group.pop(name, None)
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    meta = body.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_ANNOTATION: mark}
    return body


def body_hash(body: Manifest) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint(manifest: Manifest, ignore: tuple[str, ...], run: str) -> str:
    """What Git asked for: `manifest` without the revision annotation (or a fingerprint), `ignore`, the run id."""
    meta = dict(manifest.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items()
                           if k not in (APPLIED_ANNOTATION, REVISION_ANNOTATION)}
    return body_hash({"manifest": {**manifest, "metadata": meta}, "ignore": list(ignore), "run": run})[:32]


def as_applied(live: Manifest, body: Manifest, manager: str) -> bool:
    """Whether `live` is what applying `body` again would store (see the module's docstring)."""
    meta = live.get("metadata") or {}
    if (meta.get("annotations") or {}).get(APPLIED_ANNOTATION) != body["metadata"]["annotations"][APPLIED_ANNOTATION]:
        return False
    return written_only_by(live, manager)


def written_only_by(live: Manifest, manager: str) -> bool:
    """Whether every managedFields entry of `live` is `manager`'s (or the status subresource's)."""
    return all(entry.get("manager") == manager or entry.get("subresource") == "status"
               for entry in (live.get("metadata") or {}).get("managedFields") or [{}])


def keep_live(body: Any, live: Any, pointer: str) -> None:
    """Set the field(s) `pointer` names (`*`: every key or index) in `body` to their value in `live`, in place;
    a field `live` does not have is left out of `body`."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]

    def walk(mine: Any, theirs: Any, rest: list[str]) -> None:
        head, tail = rest[0], rest[1:]
        keys: list[Any]  # a mapping's keys, or a list's indexes
        if isinstance(mine, dict) and isinstance(theirs, dict):
            keys = list(mine) if head == "*" else [head]
        elif isinstance(mine, list) and isinstance(theirs, list):
            keys = list(range(len(mine))) if head == "*" else [int(head)] if head.isdecimal() else []
            keys = [k for k in keys if k < len(mine)]
        else:
            return
        for key in keys:
            present = key in theirs if isinstance(theirs, dict) else key < len(theirs)
            if tail:
                if present and (key in mine if isinstance(mine, dict) else True):
                    walk(mine[key], theirs[key], tail)
            elif present:
                mine[key] = copy.deepcopy(theirs[key])
            elif isinstance(mine, dict):
                mine.pop(key, None)

    if parts and parts != [""]:
        walk(body, live, parts)


def same_run(live: Manifest | None, run: str) -> bool:
    """True when `live` is the RayJob of run `run` (its `spec.jobId`), i.e. created from the same Git spec."""
    return live is not None and isinstance(live.get("spec"), dict) and live["spec"].get("jobId") == run


def carries_live_scale(desired: DesiredObject, live: Manifest | None) -> bool:
    """True when the body takes the autoscaler's fields from `live` (so it is only valid for that version)."""
    return live is not None and bool(autoscaler_pointers(desired.manifest)) and bool(cluster_spec(live))


def without_precondition(body: Manifest) -> Manifest:
    """`body` without its resourceVersion precondition (a dry-run is keyed by the live version anyway)."""
    if "resourceVersion" not in (body.get("metadata") or {}):
        return body
    out = {**body, "metadata": dict(body["metadata"])}
    del out["metadata"]["resourceVersion"]
    return out


def worker_group_fields(kind: str) -> str:
    """The conflict field path of the worker group list, e.g. `.spec.rayClusterSpec.workerGroupSpecs`."""
    return cluster_spec_path(kind).replace("/", ".") + ".workerGroupSpecs"


def only_worker_groups(kind: str, fields: list[str]) -> bool:
    """True when every conflicting field is (inside) the worker group list the autoscaler patches."""
    if not cluster_spec_path(kind):
        return False
    prefix = worker_group_fields(kind)
    return bool(fields) and all(f == prefix or f.startswith(prefix + "[") for f in fields)


def forced(self_heal: bool, environment_force: bool, desired: DesiredObject) -> bool:
    """Take over fields another manager owns: always while the environment heals drift (`selfHeal`, the
    default, as Flux and Argo CD's selfHeal with server-side apply do); otherwise only with `force: true` for
    the environment or the annotation `gitops.ray.io/force: "true"` on the object."""
    return self_heal or environment_force or str(desired.annotations.get(FORCE_ANNOTATION, "")).lower() == "true"
