"""What the pipeline needs of a target (local Ray, Kubernetes) and of the registry of targets.

The pipeline drives a `Target`: it observes live objects (and what happened to job runs), says
how desired objects would be stored, and applies one plan item at a time, reporting an `Outcome`.
A target never decides *what* to change (the planner does) and never touches the ledger; `observe`
and `expected` only read. Keeping a copy of the ledger, reporting Events and running a controller of
its own are optional capabilities (`KeepsLedger`, `ReportsEvents`, `Controls`). `Targets` is the
registry the service and the commands hand to the pipeline:
the target kinds, their typed options, the object kinds each supports, and one live instance per
connection. The implementations live in `reconciler.targets`; this module defines the seam, and is all
of the pipeline they import (checked by `.importlinter`): the few pipeline helpers a target uses (checks of
its options and objects, Secret digests, JSON pointers, the one YAML parser) are re-exported here; KubeRay's
facts are `reconciler.kuberay`'s.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, runtime_checkable

from typing_extensions import TypeVar

from ..model import (
    EnvironmentSpec,
    LedgerSnapshot,
    LiveObject,
    Manifest,
    ObjectRef,
    OptionsT_co,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    TargetOptions,
)
from . import parse
from .diff import hide_secret_values as hide_secret_values, strip as strip
from .validate import Checker as Checker, TargetCatalog, dns_label as dns_label, short as short

# The options a target takes: each target's own class (`Target[KubernetesOptions]`, no isinstance asserts). The
# registry pairs an environment's options with the target kind that parsed them, so `Targets.get` gives `Target[Any]`.
OptionsT = TypeVar("OptionsT", bound=TargetOptions, contravariant=True, default=TargetOptions)


def yaml_field(value: str) -> Any:
    """A YAML string field of an object validation accepted (`runtimeEnvYAML`, `serveConfigV2`), read by the one
    parser as validation read it (None when empty)."""
    return parse.text(value, "", None, "", "")[0]


@dataclass(frozen=True)
class ApplyContext(Generic[OptionsT_co]):
    """What an apply may need beyond the plan item: the revision and its files on disk."""

    environment: str
    revision: str
    materialize: Callable[[str], Path]  # repository path -> exported directory of that revision
    options: OptionsT_co  # the environment's own (a target instance serves several environments)
    ignore: tuple[str, ...] = ()  # the environment's `ignore` pointers: their live values are kept


@dataclass(frozen=True)
class RunReport:
    """What a target saw of one RayJob run. Status `DELETED`: the run's object is gone before it was
    seen to end (a TTL, `DeleteSelf`, a person) and it must never be submitted again."""

    submission_id: str
    job: str
    status: str
    start_time: float | None = None
    end_time: float | None = None


@dataclass(frozen=True)
class Observation:
    """Live objects (absent ones are missing from `live`) and reports on job runs."""

    live: dict[ObjectRef, LiveObject]
    runs: tuple[RunReport, ...] = ()


class Target(Protocol[OptionsT]):
    """A place where environments live, with options of its own type."""

    kind: str

    def observe(self, rendered: RenderedEnvironment[OptionsT], refs: set[ObjectRef],
                pending_runs: frozenset[str]) -> Observation:
        """Live state of `refs`; for `pending_runs` (submitted, not seen to end) whatever the target knows."""

    def expected(self, rendered: RenderedEnvironment[OptionsT],
                 live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, Manifest]:
        """Each desired object that exists live, as the target would store it if applied now (Kubernetes:
        a server-side dry-run apply, so CRD defaults and quantity formats never show as drift)."""

    def apply(self, item: PlanItem, context: ApplyContext[OptionsT]) -> Outcome:
        """Carry out one plan item (create/update/recreate/delete/submit); raise on failure."""

    def close(self, workloads: bool) -> None:
        """Release what the target holds (connections, watches); with `workloads`, also stop what it runs
        on this machine (the local target's Ray processes, unless an environment asks to `persist`)."""


@runtime_checkable
class KeepsLedger(Protocol[OptionsT]):
    """A target that keeps a copy of each environment's ledger (Kubernetes: a ConfigMap), so a daemon with
    an empty state dir, or a new leader, knows its inventory and finished runs."""

    def load_ledger(self, spec: EnvironmentSpec[OptionsT]) -> LedgerSnapshot | None: ...
    def save_ledger(self, spec: EnvironmentSpec[OptionsT], snapshot: LedgerSnapshot) -> None: ...
    def drop_ledger(self, spec: EnvironmentSpec[OptionsT]) -> None:
        """The environment left Git and nothing of it is left: its copy goes too."""


@runtime_checkable
class Controls(Protocol[OptionsT]):
    """A target that is also the operator of what it applies (the local target: RayCronJob slots, a finished
    run's status, clean-ups after runs). `control` is its loop's step for one environment; the pipeline calls it
    before it observes, in a reconcile only (a preview never acts). It answers reports of runs it ended without
    running them (RayCronJob slots missed)."""

    def control(self, spec: EnvironmentSpec[OptionsT]) -> tuple[RunReport, ...]: ...


@runtime_checkable
class Watches(Protocol[OptionsT]):
    """A target that tells the daemon (its `changed` callback) of every change someone else makes to an
    environment's objects (their status included) and Ray Pods (Kubernetes: its watches). An environment it
    watches that is Synced needs no reconcile until Git or the watch says something moved (`reconcile._quiet`)."""

    def watches(self, spec: EnvironmentSpec[OptionsT]) -> bool: ...


@runtime_checkable
class ReportsEvents(Protocol[OptionsT]):
    """A target that tells its users what was done to an object, or what keeps an environment from Git
    (Kubernetes: an Event; a Warning on the environment's ledger ConfigMap); never raises."""

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext[OptionsT],
                     reason: str = "") -> None: ...
    def report_warning(self, spec: EnvironmentSpec[OptionsT], reason: str, message: str) -> None: ...


class Targets(TargetCatalog, Protocol):
    """The registry of target kinds (what validation asks) and their live instances."""

    def get(self, spec: EnvironmentSpec) -> Target[Any]:
        """The live target for the environment (one per connection, built on first use), of the kind whose parser
        made `spec`'s options."""

    def close(self, workloads: bool) -> None:
        """Close every target built (see `Target.close`)."""
