"""Plan stage: desired objects + live objects + inventory + job ledger -> ordered plan items.

Called by the daemon and the CLI (`diff`, `plan`). Pure: it reads nothing and writes nothing.
Applies KubeRay's semantics, as the kind table (`kuberay.KINDS`) states them: what is applied in place,
what needs a restart, that RayJob spec edits are ignored by the operator (so: a new run); and the
prune guards.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace

from .. import kuberay
from ..kuberay import Changes
from ..model import (
    ENVIRONMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ON_CHANGE_ANNOTATION,
    ON_TEMPLATE_CHANGE_ANNOTATION,
    PRUNE_ANNOTATION,
    RECONCILE_ANNOTATION,
    SSA_ANNOTATION,
    Action,
    DesiredObject,
    Flag,
    LiveObject,
    Manifest,
    ObjectRef,
    PlanItem,
    RenderedEnvironment,
)
from . import diff


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of one plan: prune guards can be overridden explicitly."""

    allow_empty_prune: bool = False
    allow_large_prune: bool = False


def plan(rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject], inventory: frozenset[ObjectRef],
         finished_runs: Mapping[str, str], options: PlanOptions = PlanOptions(),
         expected: dict[ObjectRef, Manifest] | None = None, operator: bool = True) -> list[PlanItem]:
    """Ordered actions that make the target match Git. `finished_runs`: submission id -> result;
    `expected`: desired objects as the target would store them (default: as rendered); `operator`: the KubeRay
    operator runs them (its feature gates and version matter), not the target itself."""
    items: list[PlanItem] = []
    for desired in sorted(rendered.objects, key=lambda d: (kuberay.order(d.ref.kind), d.ref)):
        current = live.get(desired.ref)
        wanted = (expected or {}).get(desired.ref, desired.manifest)
        if (kept := _left_alone(rendered.spec.name, desired, current)) is not None:
            item = kept
        elif kuberay.changes(desired.ref.kind) is Changes.RERUN:
            item = _job(rendered.spec.name, desired, wanted, current, finished_runs, rendered.spec.ignore)
        else:
            item = _object(desired, wanted, current, rendered.spec.ignore, operator)
        items.append(replace(item, warnings=desired.warnings + item.warnings) if desired.warnings else item)
    items += _prune(rendered, live, inventory, options)
    return items


def owner(obj: LiveObject) -> str:
    """The environment whose ownership label a live object carries ("" when it is not ray-gitops')."""
    labels = obj.labels
    return str(labels.get(ENVIRONMENT_LABEL) or "") if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE else ""


def _left_alone(environment: str, desired: DesiredObject, current: LiveObject | None) -> PlanItem | None:
    """A SKIP or NOOP for an object Git does not change: it belongs to another environment (one object, one
    environment: never adopted, never applied, so nothing flips), or an annotation asks (in Git, or by hand on
    the live object: `reconcile: disabled`; an existing object with `ssa: IfNotPresent`)."""
    if current is not None and (other := owner(current)) and other != environment:
        return PlanItem(desired.ref, Action.SKIP, f"belongs to environment {other} (one object, one environment): not "
                        f"applied; remove it from one of them", desired, flags=frozenset({Flag.OWNED_ELSEWHERE}))
    for source, marks in (("Git", desired.annotations), ("the live object", current.annotations if current else {})):
        if marks.get(RECONCILE_ANNOTATION) == "disabled":
            return PlanItem(desired.ref, Action.SKIP, f"{RECONCILE_ANNOTATION}: disabled on {source}: left alone",
                            desired, flags=frozenset({Flag.LEFT_ALONE}))
    if current is not None and desired.annotations.get(SSA_ANNOTATION) == "IfNotPresent":
        return PlanItem(desired.ref, Action.NOOP, f"exists; {SSA_ANNOTATION}: IfNotPresent: never updated", desired,
                        flags=frozenset({Flag.LEFT_ALONE}))
    return None


def _object(desired: DesiredObject, wanted: Manifest, current: LiveObject | None, ignore: tuple[str, ...],
            operator: bool) -> PlanItem:
    gates = kuberay.gate_warnings(desired.manifest) if operator else ()
    if current is None:
        return PlanItem(desired.ref, Action.CREATE, "not on the target", desired,
                        diff.lazy(None, desired.manifest, str(desired.ref)), gates)
    owned = [*ignore, *kuberay.autoscaler_pointers(desired.manifest)]
    old, new = diff.normalize(current.manifest, owned), diff.normalize(wanted, owned)
    paths = diff.changed_paths(old, new)
    if not paths:
        return PlanItem(desired.ref, Action.NOOP, "in sync", desired)

    def item(action: Action, reason: str, *flags: Flag) -> PlanItem:
        return PlanItem(desired.ref, action, reason, desired, diff.lazy(old, new, str(desired.ref)), warnings + gates,
                        frozenset(flags) | removed, tuple(paths))

    warnings, removed = _group_warnings(current, desired)
    as_is = kuberay.changes(desired.ref.kind) is Changes.APPLY
    restart = [] if as_is else [p for p in paths if not kuberay.IN_PLACE.fullmatch(p)]
    if not restart and (not removed or desired.ref.kind == "RayCluster"):  # a RayCluster's groups drain first
        return item(Action.UPDATE, f"changed in place: {', '.join(paths)}")
    changed = ", ".join(restart) or "worker groups removed"
    if desired.annotations.get(ON_TEMPLATE_CHANGE_ANNOTATION) == "recreate":
        return item(Action.RECREATE, f"{changed} changed; {ON_TEMPLATE_CHANGE_ANNOTATION}=recreate")
    if desired.ref.kind == "RayService":
        strategy = kuberay.value_at(desired.manifest, "/spec/upgradeStrategy/type") or "NewCluster"
        if strategy == "None" and restart and not any(p.startswith("spec.rayClusterConfig") for p in restart):
            # the RayService's own fields (upgradeStrategy, delays) change no cluster: nothing waits for a restart
            return item(Action.UPDATE, f"changed in place: {', '.join(paths)}")
        return item(Action.UPDATE, f"{changed} changed; " + {
            "None": "upgradeStrategy None: KubeRay keeps serving on the current cluster (pending restart)",
            "NewClusterWithIncrementalUpgrade": "KubeRay shifts traffic to a new cluster step by step "
                                                "(incremental upgrade)"}.get(
            strategy, "KubeRay upgrades the RayService to a new cluster (zero-downtime)"),
            *([Flag.PENDING_RESTART] if strategy == "None" else []))
    if (kuberay.cluster_spec(desired.manifest).get("upgradeStrategy") or {}).get("type") == "Recreate":
        return item(Action.UPDATE, f"{changed} changed; upgradeStrategy Recreate restarts all pods")
    return item(Action.UPDATE, f"{changed} changed; applied, pending restart (existing pods keep the old template; "
                f"set upgradeStrategy.type: Recreate or {ON_TEMPLATE_CHANGE_ANNOTATION}: recreate)",
                Flag.PENDING_RESTART)


def _group_warnings(current: LiveObject, desired: DesiredObject) -> tuple[tuple[str, ...], frozenset[Flag]]:
    """Warnings about the worker groups, and GROUP_REMOVED when a group leaves the spec. A RayCluster's group
    leaves it once drained (`drain`): a warning only if it still has nodes (the drain timed out)."""
    old = [g.get("groupName") for g in kuberay.cluster_spec(current.manifest).get("workerGroupSpecs") or []]
    new = [g.get("groupName") for g in kuberay.cluster_spec(desired.manifest).get("workerGroupSpecs") or []]
    gone = [name for name in old if name not in new]
    if desired.ref.kind == "RayCluster":
        warnings = [f"worker group {name} left Git and still has nodes after draining for {DRAIN_TIMEOUT:.0f} s: "
                    f"removed from the spec anyway; KubeRay may leave them running (kuberay#1739)"
                    for name in gone if has_nodes(current, str(name))]
    else:
        warnings = [f"worker group {name} removed: KubeRay leaves its pods running (kuberay#1739); scale it to 0 "
                    f"first or recreate the cluster" for name in gone]
    flags = frozenset({Flag.GROUP_REMOVED}) if gone else frozenset()
    common_old, common_new = [n for n in old if n in new], [n for n in new if n in old]
    if common_old != common_new:
        warnings.append("worker groups reordered: the Ray autoscaler patches groups by index")
    return tuple(warnings), flags


def _job(environment: str, desired: DesiredObject, wanted: Manifest, current: LiveObject | None,
         finished: Mapping[str, str], ignore: tuple[str, ...]) -> PlanItem:
    run = desired.run_id(environment)
    if run in finished:
        if current is not None:  # its metadata (labels, annotations) still applies; its spec never again
            old, new = (diff.normalize({"metadata": m.get("metadata") or {}}) for m in (current.manifest, wanted))
            if changed := diff.changed_paths(old, new):
                return PlanItem(desired.ref, Action.UPDATE, f"changed in place: {', '.join(changed)} (run {run} "
                                f"already finished; not re-run)", desired, diff.lazy(old, new, str(desired.ref)),
                                changes=tuple(changed))
        return PlanItem(desired.ref, Action.SKIP, f"run {run} already finished ({finished[run]}); not re-run", desired,
                        flags=frozenset({Flag.RUN_FINISHED}))
    if current is None:
        return PlanItem(desired.ref, Action.SUBMIT, f"new run {run}", desired,
                        diff.lazy(None, desired.manifest, str(desired.ref)))
    owned = [*ignore, *kuberay.autoscaler_pointers(desired.manifest)]
    old, new = diff.normalize(current.manifest, owned), diff.normalize(wanted, owned)
    changed = diff.changed_paths(old, new)
    paths = [p for p in changed if p == "spec" or p.startswith(("spec.", "spec["))]
    if not paths:
        if changed:
            return PlanItem(desired.ref, Action.UPDATE, f"changed in place: {', '.join(changed)}", desired,
                            diff.lazy(old, new, str(desired.ref)), changes=tuple(changed))
        return PlanItem(desired.ref, Action.NOOP, f"run {run} in progress or done", desired)
    text, changes = diff.lazy(old, new, str(desired.ref)), tuple(paths)
    if paths == ["spec.suspend"]:
        return PlanItem(desired.ref, Action.UPDATE, "suspend toggled", desired, text, changes=changes)
    if desired.annotations.get(ON_CHANGE_ANNOTATION, "rerun") == "ignore":
        return PlanItem(desired.ref, Action.SKIP, f"spec changed ({', '.join(paths)}); {ON_CHANGE_ANNOTATION}=ignore "
                        "keeps the current run", desired, text, changes=changes)
    return PlanItem(desired.ref, Action.RECREATE, f"spec changed ({', '.join(paths)}); KubeRay ignores RayJob edits, "
                    f"so new run {run} (delete + create)", desired, text, changes=changes)


def _prune(rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject], inventory: frozenset[ObjectRef],
           options: PlanOptions) -> list[PlanItem]:
    spec = rendered.spec
    wanted = {d.ref for d in rendered.objects}
    gone = sorted((ref for ref in inventory - wanted if ref in live),
                  key=lambda r: (-kuberay.order(r.kind), r))
    if not gone:
        return []
    if not spec.prune:
        return [PlanItem(ref, Action.SKIP, "not in Git; prune is disabled for this environment") for ref in gone]
    items, deletable = [], []
    for ref in gone:
        labels, annotations = live[ref].labels, live[ref].annotations
        owners = live[ref].manifest.get("metadata", {}).get("ownerReferences") or []
        if (parent := kuberay.operator_parent(labels)) or owners:
            items.append(PlanItem(ref, Action.SKIP, "not in Git, but it belongs to "
                                  f"{owners[0].get('kind') if owners else parent}; operator children are never pruned"))
        elif labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(ENVIRONMENT_LABEL) != spec.name:
            items.append(PlanItem(ref, Action.SKIP, "not in Git, but its ownership labels no longer match; kept"))
        elif annotations.get(PRUNE_ANNOTATION) == "disabled" or annotations.get(RECONCILE_ANNOTATION) == "disabled":
            which = PRUNE_ANNOTATION if annotations.get(PRUNE_ANNOTATION) == "disabled" else RECONCILE_ANNOTATION
            items.append(PlanItem(ref, Action.SKIP, f"not in Git; protected by {which}: disabled"))
        else:
            deletable.append(ref)
    refused = ""
    if deletable and not wanted:
        if not options.allow_empty_prune:
            refused = "prune refused: the environment renders no objects (allow it explicitly to delete everything)"
    elif (len(deletable) > 1 and len(deletable) > spec.prune_max_fraction * len(inventory)
          and not options.allow_large_prune):
        refused = (f"prune refused: {len(deletable)} of {len(inventory)} objects exceeds pruneGuard.maxFraction "
                   f"{spec.prune_max_fraction}")
    if refused:
        return [PlanItem(ref, Action.SKIP, refused, flags=frozenset({Flag.PRUNE_REFUSED})) for ref in deletable] + items
    return [PlanItem(ref, Action.DELETE, "not in Git; pruned") for ref in deletable] + items


def removal_refused(known: set[str], vanished: set[str], max_fraction: float) -> str:
    """Why the environments `vanished` (known before, gone from Git now) may not be removed in one revision ("" when
    they may), the guard against a bad commit or merge that drops many directories. As `pruneGuard` does for one
    environment's objects: removing every environment at once is refused (an empty `environments/` is more
    likely a mistake than an intent), and so is removing more than `max_fraction` of them when that is more than
    one. `max_fraction` 1 turns the guard off (how a repository of one environment removes it)."""
    if not vanished or max_fraction >= 1:
        return ""
    if vanished >= known:
        return f"every environment ({len(known)}) left Git at once"
    if len(vanished) > 1 and len(vanished) > max_fraction * len(known):
        return (f"{len(vanished)} of {len(known)} environments left Git at once, more than the removal guard "
                f"{max_fraction:g} allows")
    return ""


DRAIN_TIMEOUT = 300.0  # seconds a worker group that left Git may take to lose its nodes before it leaves the spec


def has_nodes(obj: LiveObject, group: str) -> bool:
    """The live cluster still runs nodes of `group` (Kubernetes: any Pod of it, even terminating; the local target:
    nodes alive)."""
    return group in obj.oldest_nodes if obj.oldest_nodes is not None else obj.workers.get(group, 0) > 0


def drain(rendered: RenderedEnvironment, live: dict[ObjectRef, LiveObject],
          since: Mapping[ObjectRef, Mapping[str, float]], now: float
          ) -> tuple[RenderedEnvironment, dict[ObjectRef, dict[str, float]]]:
    """The environment to plan, in which each worker group that left Git but still has nodes stays in its
    RayCluster, at its live place, scaled to 0 (replicas, minReplicas and maxReplicas 0: KubeRay then deletes its
    Pods, where it would leave them running if the group just went, kuberay#1739); it leaves the spec once its
    nodes are gone, or after DRAIN_TIMEOUT seconds of draining. Also, per cluster, the groups draining and since
    when (`since`: as reported before)."""
    objects, draining = [], {}
    for desired in rendered.objects:
        current = live.get(desired.ref)
        keep: dict[str, float] = {}
        if desired.ref.kind == "RayCluster" and current is not None:
            wanted = kuberay.worker_groups(desired.manifest)
            for name in kuberay.worker_groups(current.manifest):
                started = (since.get(desired.ref) or {}).get(name, now)
                if name not in wanted and has_nodes(current, name) and now - started < DRAIN_TIMEOUT:
                    keep[name] = started
        if not keep:
            objects.append(desired)
            continue
        assert current is not None
        manifest = copy.deepcopy(desired.manifest)
        groups = manifest["spec"].setdefault("workerGroupSpecs", [])
        live_order = [str(g.get("groupName")) for g in current.manifest["spec"].get("workerGroupSpecs") or []]
        for name in keep:
            zero = {**copy.deepcopy(kuberay.worker_groups(current.manifest)[name]), "replicas": 0, "minReplicas": 0,
                    "maxReplicas": 0}
            zero.pop("scaleStrategy", None)
            before = [n for n in live_order[:live_order.index(name)] if n in {str(g.get("groupName")) for g in groups}]
            at = 1 + max((i for i, g in enumerate(groups) if g.get("groupName") in before), default=-1)
            groups.insert(at, zero)
        objects.append(replace(desired, manifest=manifest))
        draining[desired.ref] = keep
    return replace(rendered, objects=tuple(objects)), draining
