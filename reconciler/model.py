"""Plain data shared by every stage: object references, desired/live objects, plans, outcomes.

Nothing here does I/O. Every other module imports this one; it imports none of them.
"""
from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol

from typing_extensions import TypeVar  # `default=`: typing's TypeVar has it from Python 3.13

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ray-gitops"
ENVIRONMENT_LABEL = "gitops.ray.io/environment"
REVISION_ANNOTATION = "gitops.ray.io/revision"
APPLIED_ANNOTATION = "gitops.ray.io/applied"  # Kubernetes: the fingerprint of the apply body that stored the object
LEDGER_PREFIX = "ray-gitops-ledger-"  # ConfigMap ray-gitops-ledger-<env>: an environment's ledger on Kubernetes
PRUNE_ANNOTATION = "gitops.ray.io/prune"
ON_CHANGE_ANNOTATION = "gitops.ray.io/on-change"
ON_TEMPLATE_CHANGE_ANNOTATION = "gitops.ray.io/on-template-change"
RECONCILE_ANNOTATION = "gitops.ray.io/reconcile"  # `disabled` (in Git or by hand on the live object): left alone
SSA_ANNOTATION = "gitops.ray.io/ssa"  # `IfNotPresent`: created when absent, never updated or healed afterwards
# a RayCronJob's Kubernetes CronJob settings that KubeRay's RayCronJob lacks (honoured by the local target only):
STARTING_DEADLINE_ANNOTATION = "gitops.ray.io/starting-deadline-seconds"  # a slot later than that is missed
CONCURRENCY_ANNOTATION = "gitops.ray.io/concurrency-policy"  # Allow (default), Forbid or Replace
CONCURRENCY_POLICIES = ("Allow", "Forbid", "Replace")

Manifest = dict[str, Any]


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Identity of one object: API group, kind, namespace, name."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    @classmethod
    def of(cls, manifest: Manifest, default_namespace: str = "") -> ObjectRef:
        api_version = str(manifest.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        meta = manifest.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        return cls(group, str(manifest.get("kind", "")), str(meta.get("namespace") or default_namespace),
                   str(meta.get("name", "")))


@dataclass(frozen=True)
class DesiredObject:
    """An object rendered from Git, with where it came from."""

    ref: ObjectRef
    manifest: Manifest
    file: str
    document: int
    # what validation accepted but says (`<field path>: <reason>`: a value the target clamps), on each plan item
    warnings: tuple[str, ...] = ()

    @property
    def annotations(self) -> dict[str, str]:
        return self.manifest.get("metadata", {}).get("annotations") or {}

    @functools.cached_property
    def spec_hash(self) -> str:
        """`spec_hash(manifest)`, computed once: a RayJob's run id is needed several times in one reconcile."""
        return spec_hash(self.manifest)

    def run_id(self, environment: str) -> str:
        """`job_submission_id` of this object in `environment`."""
        return f"{environment}-{self.ref.name}-{self.spec_hash}"


@dataclass(frozen=True)
class LiveObject:
    """An object as the target reports it: its stored manifest and its status."""

    ref: ObjectRef
    manifest: Manifest
    status: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, int] = field(default_factory=dict)  # group -> ready workers, when the target knows
    # group (KubeRay's `ray.io/group`: `headgroup` or a worker group) -> creation time (Unix seconds) of its oldest
    # node; None when the target cannot tell (then a pending restart lasts until the cluster is recreated)
    oldest_nodes: dict[str, float] | None = None

    @property
    def labels(self) -> dict[str, str]:
        return self.manifest.get("metadata", {}).get("labels") or {}

    @property
    def annotations(self) -> dict[str, str]:
        return self.manifest.get("metadata", {}).get("annotations") or {}


class Action(str, enum.Enum):
    """What the planner asks the target to do with one object."""

    CREATE = "create"
    UPDATE = "update"
    RECREATE = "recreate"
    DELETE = "delete"
    SUBMIT = "submit"
    SKIP = "skip"
    NOOP = "noop"


class Outcome(str, enum.Enum):
    """What actually happened to one object."""

    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"
    RECREATED = "recreated"
    DELETED = "deleted"
    SKIPPED = "skipped"
    SUBMITTED = "submitted"
    FAILED = "failed"


class Flag(enum.StrEnum):
    """A fact about a plan item that later stages act on (instead of reading its reason text)."""

    RUN_FINISHED = "run-finished"  # a RayJob skipped because its run already ended: the normal steady state
    PRUNE_REFUSED = "prune-refused"  # a guard kept an object Git no longer holds: the environment is OutOfSync
    GROUP_REMOVED = "group-removed"  # a worker group left Git (KubeRay leaves its pods running)
    PENDING_RESTART = "pending-restart"  # applied, but existing pods keep the old template
    OWNED_ELSEWHERE = "owned-elsewhere"  # the live object belongs to another environment: never adopted or applied
    LEFT_ALONE = "left-alone"  # gitops.ray.io/reconcile: disabled (or ssa: IfNotPresent on an existing object)
    DRAINING = "draining"  # a worker group that left Git is scaled to 0 before it leaves the spec


class SyncStatus(enum.StrEnum):
    """How an environment's target compares with Git (the `sync_status` label)."""

    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    STALE = "Stale"  # Git cannot be fetched: the last good revision is applied
    WAITING = "Waiting"  # a promotion gate: a dependency is not yet Healthy at the new revision
    UNVERIFIED = "Unverified"  # the branch head's signature did not verify: the last good revision is applied
    REMOVED = "Removed"  # the environment left Git: what it applied was pruned


class Health(enum.StrEnum):
    """An object's or an environment's health (the `health_status` label), best first."""

    HEALTHY = "Healthy"
    UNKNOWN = "Unknown"
    SUSPENDED = "Suspended"
    PROGRESSING = "Progressing"
    MISSING = "Missing"
    DEGRADED = "Degraded"

    @staticmethod
    def worst(healths: list[Health]) -> Health:
        """The least healthy (Healthy when empty)."""
        order = list(Health)
        return max(healths, key=order.index, default=Health.HEALTHY)


class ReconcileResult(enum.StrEnum):
    """How one reconcile ended (the `result` label of `reconcile_total`)."""

    SUCCESS = "success"
    NOOP = "noop"
    ERROR = "error"


class HistoryResult(enum.StrEnum):
    """A history row's result: its revision applied, failed to apply, or the environment left Git."""

    SUCCESS = "success"
    ERROR = "error"
    REMOVED = "removed"


class RunResult(enum.StrEnum):
    """How a RayJob run ended (the `result` label of `rayjob_runs_total`); DELETED: its RayJob was gone before
    the run was seen to end (TTL or deletion), never counted."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    MISSED = "missed"
    DELETED = "deleted"


JOB_STATUSES = ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED")  # a RayJob's status.jobStatus
# a run's final status -> its result (MISSED: a RayCronJob slot not run: a newer one was due, or it was past
# its starting deadline)
TERMINAL_JOB_STATUSES = {"SUCCEEDED": RunResult.SUCCEEDED, "FAILED": RunResult.FAILED, "STOPPED": RunResult.STOPPED,
                         "MISSED": RunResult.MISSED}


@dataclass(frozen=True)
class PlanItem:
    """One step of a plan: the object, the action, why, and the diff that led to it (rendered as text
    only when someone reads `diff`: the daemon never does, `ray-gitops diff` does)."""

    ref: ObjectRef
    action: Action
    reason: str
    desired: DesiredObject | None = None
    difference: Callable[[], str] | None = field(default=None, repr=False, compare=False)
    warnings: tuple[str, ...] = ()
    flags: frozenset[Flag] = frozenset()
    changes: tuple[str, ...] = ()  # the changed field paths, e.g. spec.workerGroupSpecs[cpu].replicas

    @functools.cached_property
    def diff(self) -> str:
        return self.difference() if self.difference is not None else ""

    def as_json(self, diff: str | None = None) -> dict[str, Any]:
        """The item as `diff -o json` and the status page's plan show it (with `diff` when given)."""
        return {"object": str(self.ref), "kind": self.ref.kind, "namespace": self.ref.namespace,
                "name": self.ref.name, "action": self.action.value, "reason": self.reason,
                "changes": list(self.changes), "warnings": list(self.warnings),
                "flags": sorted(f.value for f in self.flags), **({"diff": diff} if diff is not None else {})}


class TargetOptions(Protocol):
    """A target's typed, frozen options (each target defines and validates its own)."""

    @property
    def namespace(self) -> str:
        """Where objects without a namespace go."""

    @property
    def namespaces(self) -> frozenset[str]:
        """Every namespace the environment may write to (its own, and those it lists)."""

    def connection(self) -> tuple[Any, ...]:
        """What identifies one connection: environments with equal values share one target instance."""


# The options type of the specs below: a target's code sees its own options class (`EnvironmentSpec[LocalOptions]`),
# the pipeline any target's (a bare `EnvironmentSpec` is `EnvironmentSpec[TargetOptions]`).
OptionsT_co = TypeVar("OptionsT_co", bound=TargetOptions, covariant=True, default=TargetOptions)


@dataclass(frozen=True)
class TargetSpec(Generic[OptionsT_co]):
    """Where an environment is applied: a registered target kind and its options."""

    kind: str
    options: OptionsT_co

    @property
    def namespace(self) -> str:
        return self.options.namespace


@dataclass(frozen=True)
class Patch:
    """One entry of `spec.patches`: the object it changes (kind and name) and a merge patch (a mapping)
    or an RFC 6902 JSON patch (a list of operations)."""

    kind: str
    name: str
    patch: Any


@dataclass(frozen=True)
class EnvironmentSpec(Generic[OptionsT_co]):
    """The parsed `environment.yaml` of one environment."""

    name: str
    target: TargetSpec[OptionsT_co]
    interval: float = 60.0
    prune: bool = True
    suspend: bool = False
    ignore: tuple[str, ...] = ()
    max_workers_per_group: int | None = None
    prune_max_fraction: float = 0.5
    base: str = ""  # a directory of shared objects, from the repository root
    patches: tuple[Patch, ...] = ()
    substitute: tuple[tuple[str, Any], ...] = ()  # ${VAR} -> value, in order
    depends_on: tuple[str, ...] = ()  # environments that must be Healthy at a revision before this applies it


@dataclass(frozen=True)
class RenderedEnvironment(Generic[OptionsT_co]):
    """An environment at one revision: its settings and the objects Git wants."""

    spec: EnvironmentSpec[OptionsT_co]
    objects: tuple[DesiredObject, ...]
    revision: str = ""


@dataclass(frozen=True)
class LedgerSnapshot:
    """What a target keeps of an environment's ledger: its inventory, its job runs (submission id -> result,
    or "" while the run has not been seen to end), and the last branch head that passed signature verification
    ("" without verification), so a daemon that lost its state dir still refuses a rollback of history."""

    inventory: frozenset[ObjectRef] = frozenset()
    runs: tuple[tuple[str, str], ...] = ()
    verified: str = ""


def desired_workers(group: dict[str, Any]) -> int:
    """clamp(replicas, minReplicas, maxReplicas) x numOfHosts, as KubeRay computes a group's pods."""
    low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
    workers: int = min(max(group.get("replicas", 0), low), high) * group.get("numOfHosts", 1)  # validated integers
    return workers


def spec_hash(manifest: Manifest, length: int = 10) -> str:
    """Stable short hash of an object's spec (key order does not matter)."""
    text = json.dumps(manifest.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def job_submission_id(environment: str, name: str, manifest: Manifest) -> str:
    """Submission id of a RayJob run: `<env>-<name>-<hash10>`, so a restart never submits twice."""
    return f"{environment}-{name}-{spec_hash(manifest)}"


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_QUANTITY_SUFFIX = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
                    "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")


def parse_time(value: Any) -> float | None:
    """A time as Unix seconds: KubeRay's RFC 3339 strings (`2026-12-03T10:00:00Z`) or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) or None
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def parse_duration(text: str | float | int) -> float:
    """`90s`, `5m`, `1h30m`, `500ms` or a bare number of seconds (0 or more, finite) -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not 0 <= text < float("inf"):
            raise ValueError(f"not a duration: {text!r} (a number of seconds, 0 or more)")
        return float(text)
    value = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h)")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_quantity(text: str | float | int) -> float:
    """A Kubernetes resource quantity (`500m`, `2`, `1Gi`, `1e3`) -> a number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _QUANTITY.fullmatch(str(text).strip())
    if not match:
        raise ValueError(f"not a resource quantity: {text!r}")
    return float(match.group(1)) * _QUANTITY_SUFFIX[match.group(2) or ""]
