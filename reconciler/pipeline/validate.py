"""Validate stage: structural checks of `environment.yaml` and of every Ray object.

Called by `render` for each document. Returns errors naming file, document, object and field;
never raises for bad input and never looks at a target. Checks mirror the KubeRay CRD types and
the operator's own validation, so mistakes surface at commit time rather than as a stuck object.
"""
from __future__ import annotations

import re
import reprlib
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from croniter import croniter

from ..errors import ValidationError
from ..kuberay import KINDS, Kind, submitter_command
from ..model import (
    CONCURRENCY_ANNOTATION,
    CONCURRENCY_POLICIES,
    ENVIRONMENT_LABEL,
    LEDGER_PREFIX,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    ON_CHANGE_ANNOTATION,
    ON_TEMPLATE_CHANGE_ANNOTATION,
    RECONCILE_ANNOTATION,
    SSA_ANNOTATION,
    STARTING_DEADLINE_ANNOTATION,
    EnvironmentSpec,
    Patch,
    TargetOptions,
    TargetSpec,
    parse_duration,
    parse_quantity,
)
from . import parse
from .budgets import MAX_REPORTED, Budget

ENVIRONMENT_API_VERSION = "gitops.ray.io/v1alpha1"
# (apiVersion, kind) -> its Kind; looked up with a document's raw values, whatever their types
_API_KINDS: dict[tuple[Any, Any], Kind] = {(k.api_version, k.name): k for k in KINDS.values()}
DELETION_POLICIES = {"DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"}
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def dns_label(value: str) -> bool:
    """A DNS-1123 label, as Kubernetes requires of namespaces (and ray-gitops of environment names): at
    most 63 characters of a-z, 0-9 and '-', starting and ending alphanumeric."""
    return len(value) <= 63 and bool(_DNS1123_LABEL.fullmatch(value))


def short(value: Any) -> str:
    """`value` for an error message: its repr, cut to a few dozen characters whatever its size."""
    return _REPR.repr(value)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4
_REPR.maxlevel = 2


class TargetCatalog(Protocol):
    """What validation asks of the target registry (`reconciler.targets`): which target kinds exist,
    each kind's options (parsed and checked by the target's own options class, and admitted for the
    environment by the daemon's settings), its object kinds, and its own checks of an object (the local
    target's caps)."""

    def names(self) -> tuple[str, ...]: ...
    def options(self, kind: str, raw: Mapping[str, Any], check: Checker, path: str,
                environment: str) -> TargetOptions | None: ...
    def kinds(self, kind: str) -> frozenset[str]: ...
    def check(self, kind: str, doc: dict[str, Any], check: Checker, environment: EnvironmentSpec) -> None: ...


class Checker:
    """Collects errors (and warnings: accepted, but worth saying) for one document; each check names the field
    path it looked at."""

    def __init__(self, file: str, document: int | None, obj: str = "", budget: Budget | None = None) -> None:
        self.file, self.document, self.obj, self.budget = file, document, obj, budget
        self.errors: list[ValidationError] = []
        self.warnings: list[ValidationError] = []

    def fail(self, path: str, reason: str) -> None:
        self.errors.append(ValidationError(self.file, reason, self.document, self.obj, path))

    def warn(self, path: str, reason: str) -> None:
        self.warnings.append(ValidationError(self.file, reason, self.document, self.obj, path))

    def mapping(self, value: Any, path: str, required: bool = False) -> dict[str, Any]:
        if value is None:
            if required:
                self.fail(path, "required field is missing")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def sequence(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {type(value).__name__}")
            return []
        return value

    def integer(self, value: Any, path: str, minimum: int = 0) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(path, f"must be an integer >= {minimum}, got {short(value)}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> None:
        if value is not None and not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {short(value)}")

    def string(self, value: Any, path: str, required: bool = False) -> str | None:
        if value is None or value == "":
            if required:
                self.fail(path, "required field is missing")
            return None
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {short(value)}")
            return None
        return value

    def string_map(self, value: Any, path: str, whose: str, secret: bool = False) -> None:
        """A map[string]string field: every value a string (a number or boolean needs quotes in YAML); the
        first `MAX_REPORTED` others named, then how many more. A Secret's values are never shown."""
        bad = 0
        for key, item in self.mapping(value, path).items():
            if isinstance(item, str):
                continue
            bad += 1
            if bad <= MAX_REPORTED:
                got = type(item).__name__ if secret else short(item)
                self.fail(f"{path}.{key}", f"must be a string ({whose} type is map[string]string), got {got}; "
                          "quote it")
        if bad > MAX_REPORTED:
            self.fail(path, f"{bad - MAX_REPORTED} more values are not strings")

    def known_keys(self, value: Mapping[str, Any], path: str, known: set[str]) -> None:
        for key in value:
            if key not in known:
                self.fail(f"{path}.{key}", f"unknown option (known: {', '.join(sorted(known))})")

    def one_of(self, value: Any, path: str, allowed: set[str]) -> None:
        if value is not None and value not in allowed:
            self.fail(path, f"must be one of {', '.join(sorted(allowed))}, got {short(value)}")


def environment(doc: Any, file: str, directory_name: str,
                targets: TargetCatalog) -> tuple[EnvironmentSpec | None, list[ValidationError]]:
    """Parse and check an `environment.yaml` document."""
    c = Checker(file, None, f"Environment/{directory_name}")
    doc = c.mapping(doc, "", required=True)
    if not doc:
        c.fail("", f"must be an Environment document (apiVersion {ENVIRONMENT_API_VERSION}, kind Environment, "
               "spec.target)")
        return None, c.errors
    if (doc.get("apiVersion"), doc.get("kind")) != (ENVIRONMENT_API_VERSION, "Environment"):
        c.fail("apiVersion", f"must be {ENVIRONMENT_API_VERSION} kind Environment")
    name = c.string(c.mapping(doc.get("metadata"), "metadata").get("name"), "metadata.name")
    if name is not None and name != directory_name:
        c.fail("metadata.name", f"must equal the directory name {directory_name!r}, got {short(name)}")
    spec = c.mapping(doc.get("spec"), "spec", required=True)
    target = c.mapping(spec.get("target"), "spec.target", required=True)
    names = targets.names()
    kinds = [k for k in names if k in target]
    if len(kinds) != 1 or set(target) - set(names):
        c.fail("spec.target", f"must name exactly one target: {' or '.join(names)}")
    options = None
    if len(kinds) == 1:
        path = f"spec.target.{kinds[0]}"
        options = targets.options(kinds[0], c.mapping(target.get(kinds[0]), path), c, path, directory_name)
    interval = 60.0
    try:
        interval = parse_duration(spec.get("interval", "60s"))
    except ValueError as exc:
        c.fail("spec.interval", str(exc))
    for flag in ("prune", "suspend"):
        c.boolean(spec.get(flag), f"spec.{flag}")
    ignore = c.sequence(spec.get("ignore"), "spec.ignore")
    for i, rule in enumerate(ignore):
        if not isinstance(rule, str) or not rule.startswith("/"):
            c.fail(f"spec.ignore[{i}]", f"must be a JSON pointer such as /spec/x/*/y, got {short(rule)}")
    policy = c.mapping(spec.get("policy"), "spec.policy")
    max_workers = c.integer(policy.get("maxWorkersPerGroup"), "spec.policy.maxWorkersPerGroup", minimum=1)
    guard = c.mapping(spec.get("pruneGuard"), "spec.pruneGuard")
    fraction = guard.get("maxFraction", 0.5)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        c.fail("spec.pruneGuard.maxFraction", f"must be a number in (0, 1], got {short(fraction)}")
        fraction = 0.5
    base, patches, variables, depends_on = _overlays(c, spec, directory_name)
    if c.errors or options is None:
        return None, c.errors
    return EnvironmentSpec(
        name=directory_name, target=TargetSpec(kinds[0], options), interval=interval,
        prune=bool(spec.get("prune", True)), suspend=bool(spec.get("suspend", False)),
        ignore=tuple(ignore), max_workers_per_group=max_workers, prune_max_fraction=float(fraction),
        base=base, patches=patches, substitute=variables, depends_on=depends_on,
    ), []


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _overlays(c: Checker, spec: dict[str, Any], name: str) -> tuple[str, tuple[Patch, ...], tuple[tuple[str, Any], ...],
                                                                  tuple[str, ...]]:
    """`spec.base`, `spec.patches`, `spec.substitute` and `spec.dependsOn`, checked."""
    base = c.string(spec.get("base"), "spec.base") or ""
    parts = base.strip("/").split("/")
    if base and (base.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == "environments"):
        c.fail("spec.base", f"must be a directory of the repository, relative to its root and outside environments/, "
               f"got {short(base)}")
    patches = []
    for i, entry in enumerate(c.sequence(spec.get("patches"), "spec.patches")):
        path = f"spec.patches[{i}]"
        entry = c.mapping(entry, path)
        c.known_keys(entry, path, {"target", "patch"})
        target = c.mapping(entry.get("target"), f"{path}.target", required=True)
        c.known_keys(target, f"{path}.target", {"kind", "name"})
        kind = c.string(target.get("kind"), f"{path}.target.kind", required=True)
        target_name = c.string(target.get("name"), f"{path}.target.name", required=True)
        patch = entry.get("patch")
        if not isinstance(patch, (dict, list)) or not patch:
            c.fail(f"{path}.patch", "must be a merge patch (a mapping) or a JSON patch (a list of operations)")
        elif kind and target_name:
            patches.append(Patch(kind, target_name, patch))
    variables = []
    for key, value in c.mapping(spec.get("substitute"), "spec.substitute").items():
        if not _VARIABLE_NAME.fullmatch(key):
            c.fail(f"spec.substitute.{key}", "must be a variable name (letters, digits, _)")
        elif isinstance(value, (dict, list)) or value is None:
            c.fail(f"spec.substitute.{key}", f"must be a string, number or boolean, got {short(value)}")
        else:
            variables.append((key, value))
    depends_on = []
    for i, entry in enumerate(c.sequence(spec.get("dependsOn"), "spec.dependsOn")):
        path = f"spec.dependsOn[{i}]"
        entry = c.mapping(entry, path)
        c.known_keys(entry, path, {"environment"})
        other = c.string(entry.get("environment"), f"{path}.environment", required=True)
        if other == name:
            c.fail(f"{path}.environment", "an environment cannot depend on itself")
        elif other is not None and not dns_label(other):
            c.fail(f"{path}.environment", f"must be an environment name, got {short(other)}")
        elif other:
            depends_on.append(other)
    return base.strip("/"), tuple(patches), tuple(variables), tuple(depends_on)


def ray_object(doc: dict[str, Any], file: str, index: int, environment: EnvironmentSpec,
               supported: frozenset[str],
               target_check: Callable[[dict[str, Any], Checker], None] | None = None,
               budget: Budget | None = None) -> tuple[list[ValidationError], list[ValidationError]]:
    """Check one rendered object document: its errors and its warnings. `supported`: the object kinds of the
    environment's target; `target_check`: the target's own checks, run on an object that passed these;
    `budget`: the render's, which parsing `runtimeEnvYAML` spends from."""
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    c = Checker(file, index, f"{kind}/{meta.get('name', '?')}", budget)
    known = _API_KINDS.get((api_version, kind))
    if known is None:
        c.fail("kind", f"unsupported object {api_version}/{kind}: expected one of "
               + ", ".join(f"{a} {k}" for a, k in sorted(_API_KINDS)))
        return c.errors, []
    if kind not in supported:
        c.fail("kind", f"{kind} is not supported by the {environment.target.kind} target")
    metadata = c.mapping(doc.get("metadata"), "metadata", required=True)
    if not metadata.get("name") and metadata.get("generateName"):
        c.fail("metadata.generateName", "a GitOps object needs a stable metadata.name: ray-gitops knows an object by "
               "its name to diff it, prune it and never run it twice, and generateName makes a new object at every "
               "apply; set metadata.name instead")
        name = None
    else:
        name = c.string(metadata.get("name"), "metadata.name", required=True)
    if name and (len(name) > 63 or not _DNS1123.fullmatch(name)):
        c.fail("metadata.name", f"must be a DNS-1123 name of at most 63 characters, got {short(name)}")
    namespace = c.string(metadata.get("namespace"), "metadata.namespace")
    allowed = environment.target.options.namespaces
    if namespace is not None and not dns_label(namespace):
        c.fail("metadata.namespace", f"must be a DNS-1123 label (a-z, 0-9, '-'), got {short(namespace)}")
    elif namespace is not None and namespace not in allowed:
        c.fail("metadata.namespace", f"{namespace} is outside this environment: it may write only to "
               f"{', '.join(sorted(allowed))} (a Kubernetes environment lists more in spec.target.kubernetes."
               "namespaces)")
    if kind == "ConfigMap" and isinstance(name, str) and name.startswith(LEDGER_PREFIX):
        c.fail("metadata.name", f"{LEDGER_PREFIX}* ConfigMaps are ray-gitops' own ledgers: Git may not hold one")
    labels = c.mapping(meta.get("labels"), "metadata.labels")
    for label, value in ((ENVIRONMENT_LABEL, environment.name), (MANAGED_BY_LABEL, MANAGED_BY_VALUE)):
        if labels.get(label, value) != value:
            c.fail(f"metadata.labels.{label}", f"is ray-gitops' ownership label, set to {value!r} for this "
                   f"environment; Git may not set it to {short(labels[label])}")
    annotations = c.mapping(meta.get("annotations"), "metadata.annotations")
    c.one_of(annotations.get(ON_CHANGE_ANNOTATION), f"metadata.annotations.{ON_CHANGE_ANNOTATION}", {"rerun", "ignore"})
    c.one_of(annotations.get(ON_TEMPLATE_CHANGE_ANNOTATION), f"metadata.annotations.{ON_TEMPLATE_CHANGE_ANNOTATION}",
             {"recreate", "none"})
    c.one_of(annotations.get(RECONCILE_ANNOTATION), f"metadata.annotations.{RECONCILE_ANNOTATION}",
             {"disabled", "enabled"})
    c.one_of(annotations.get(SSA_ANNOTATION), f"metadata.annotations.{SSA_ANNOTATION}", {"IfNotPresent"})
    for field_name in known.string_maps:
        c.string_map(doc.get(field_name), field_name, "Kubernetes'", secret=kind == "Secret")
    c.one_of(annotations.get(CONCURRENCY_ANNOTATION), f"metadata.annotations.{CONCURRENCY_ANNOTATION}",
             set(CONCURRENCY_POLICIES))
    deadline = annotations.get(STARTING_DEADLINE_ANNOTATION)
    if deadline is not None and not (isinstance(deadline, str) and deadline.isdecimal()):
        c.fail(f"metadata.annotations.{STARTING_DEADLINE_ANNOTATION}", f"must be a whole number of seconds as a "
               f"string (e.g. \"600\"), got {short(deadline)}")
    if kind == "RayCluster":
        _cluster_spec(c, c.mapping(doc.get("spec"), "spec", required=True), "spec", environment)
    elif kind == "RayJob":
        _job_spec(c, c.mapping(doc.get("spec"), "spec", required=True), environment)
    elif kind == "RayService":
        spec = c.mapping(doc.get("spec"), "spec", required=True)
        upgrade = c.mapping(spec.get("upgradeStrategy"), "spec.upgradeStrategy")
        c.one_of(upgrade.get("type"), "spec.upgradeStrategy.type", {"NewCluster", "NewClusterWithIncrementalUpgrade",
                                                                    "None"})
        c.integer(spec.get("rayClusterDeletionDelaySeconds"), "spec.rayClusterDeletionDelaySeconds")
        serve_config = c.string(spec.get("serveConfigV2"), "spec.serveConfigV2")
        if serve_config:
            _serve_config(c, serve_config)
        _cluster_spec(c, c.mapping(spec.get("rayClusterConfig"), "spec.rayClusterConfig", required=True),
                      "spec.rayClusterConfig", environment)
    elif kind == "RayCronJob":
        _cron_spec(c, c.mapping(doc.get("spec"), "spec", required=True), environment)
    if target_check is not None and not c.errors:
        target_check(doc, c)
    return c.errors, c.warnings


def _serve_config(c: Checker, text: str, path: str = "spec.serveConfigV2") -> None:
    """`serveConfigV2`, Ray Serve's multi-application config as a YAML string: a mapping whose `applications` each
    name an `import_path`; a relative `working_dir` stays inside the repository (as a RayJob's)."""
    value, errors = parse.text(text, c.file, c.document, c.obj, path)
    c.errors += errors
    config = c.mapping(value, path)
    for i, app in enumerate(c.sequence(config.get("applications"), f"{path}.applications")):
        where = f"{path}.applications[{i}]"
        app = c.mapping(app, where)
        c.string(app.get("import_path"), f"{where}.import_path", required=True)
        working_dir = c.mapping(app.get("runtime_env"), f"{where}.runtime_env").get("working_dir")
        if isinstance(working_dir, str) and "://" not in working_dir and (
                working_dir.startswith("/") or ".." in working_dir.split("/")):
            c.fail(f"{where}.runtime_env.working_dir", f"must be relative to the repository root and stay inside "
                   f"it, got {short(working_dir)}")


def _cron_spec(c: Checker, spec: dict[str, Any], environment: EnvironmentSpec) -> None:
    """A RayCronJob (KubeRay 1.6, alpha): a cron `schedule`, optional `timeZone` (KubeRay 1.7) and `suspend`,
    and a `jobTemplate` that is a RayJob spec."""
    schedule = c.string(spec.get("schedule"), "spec.schedule", required=True)
    if schedule is not None and not croniter.is_valid(schedule):
        c.fail("spec.schedule", f"is not a cron schedule (five fields, e.g. \"0 2 * * *\"), got {short(schedule)}")
    zone = c.string(spec.get("timeZone"), "spec.timeZone")
    if zone is not None:
        try:
            zoneinfo.ZoneInfo(zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            c.fail("spec.timeZone", f"is not an IANA time zone (e.g. Europe/Paris), got {short(zone)}")
    c.boolean(spec.get("suspend"), "spec.suspend")
    _job_spec(c, c.mapping(spec.get("jobTemplate"), "spec.jobTemplate", required=True), environment,
              "spec.jobTemplate")


def _cluster_spec(c: Checker, spec: dict[str, Any], path: str, environment: EnvironmentSpec) -> None:
    c.boolean(spec.get("enableInTreeAutoscaling"), f"{path}.enableInTreeAutoscaling")
    c.boolean(spec.get("suspend"), f"{path}.suspend")
    upgrade = c.mapping(spec.get("upgradeStrategy"), f"{path}.upgradeStrategy")
    c.one_of(upgrade.get("type"), f"{path}.upgradeStrategy.type", {"Recreate", "None"})
    auth = c.mapping(spec.get("authOptions"), f"{path}.authOptions")
    c.one_of(auth.get("mode"), f"{path}.authOptions.mode", {"disabled", "token"})
    c.boolean(auth.get("enableK8sTokenAuth"), f"{path}.authOptions.enableK8sTokenAuth")
    c.string(auth.get("secretName"), f"{path}.authOptions.secretName")
    _group(c, c.mapping(spec.get("headGroupSpec"), f"{path}.headGroupSpec", required=True), f"{path}.headGroupSpec")
    seen: set[str] = set()
    for i, group in enumerate(c.sequence(spec.get("workerGroupSpecs"), f"{path}.workerGroupSpecs")):
        gpath = f"{path}.workerGroupSpecs[{i}]"
        group = c.mapping(group, gpath)
        name = c.string(group.get("groupName"), f"{gpath}.groupName", required=True)
        if name in seen:
            c.fail(f"{gpath}.groupName", f"duplicate worker group {short(name)}")
        seen.add(name or "")
        replicas = c.integer(group.get("replicas"), f"{gpath}.replicas")
        low = c.integer(group.get("minReplicas"), f"{gpath}.minReplicas")
        high = c.integer(group.get("maxReplicas"), f"{gpath}.maxReplicas")
        c.integer(group.get("numOfHosts"), f"{gpath}.numOfHosts", minimum=1)
        if low is not None and high is not None and low > high:
            c.fail(f"{gpath}.minReplicas", f"minReplicas {low} is greater than maxReplicas {high}")
        limit = environment.max_workers_per_group
        for field_name, value in (("replicas", replicas), ("maxReplicas", high)):
            if limit is not None and value is not None and value > limit:
                c.fail(f"{gpath}.{field_name}", f"{value} exceeds policy.maxWorkersPerGroup {limit}")
        _group(c, group, gpath)


def _group(c: Checker, group: dict[str, Any], path: str) -> None:
    c.string_map(group.get("rayStartParams"), f"{path}.rayStartParams", "KubeRay's")
    template = c.mapping(group.get("template"), f"{path}.template", required=True)
    pod = c.mapping(template.get("spec"), f"{path}.template.spec", required=bool(template))
    containers = c.sequence(pod.get("containers"), f"{path}.template.spec.containers")
    if pod and not containers:
        c.fail(f"{path}.template.spec.containers", "must list at least one container")
    for i, container in enumerate(containers):
        cpath = f"{path}.template.spec.containers[{i}]"
        container = c.mapping(container, cpath)
        c.string(container.get("name"), f"{cpath}.name", required=True)
        resources = c.mapping(container.get("resources"), f"{cpath}.resources")
        for section in ("limits", "requests"):
            for res, qty in c.mapping(resources.get(section), f"{cpath}.resources.{section}").items():
                try:
                    parse_quantity(qty)
                except ValueError as exc:
                    c.fail(f"{cpath}.resources.{section}.{res}", str(exc))


def _job_spec(c: Checker, spec: dict[str, Any], environment: EnvironmentSpec, path: str = "spec") -> None:
    """A RayJob's spec (or a RayCronJob's `jobTemplate`, at `path`)."""
    mode = spec.get("submissionMode")
    c.one_of(mode, f"{path}.submissionMode", {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"})
    entrypoint = c.string(spec.get("entrypoint"), f"{path}.entrypoint")
    if entrypoint is None and mode != "InteractiveMode" and not submitter_command(spec):
        c.fail(f"{path}.entrypoint", "required field is missing: the operator submits it as the job; only "
               "InteractiveMode, or a submitterPodTemplate whose container sets its own command, runs without one")
    template = c.mapping(spec.get("submitterPodTemplate"), f"{path}.submitterPodTemplate")
    if template and mode == "SidecarMode":
        c.fail(f"{path}.submitterPodTemplate", "SidecarMode runs the submitter in the head Pod: KubeRay refuses a "
               "submitterPodTemplate with it")
    has_cluster, has_selector = "rayClusterSpec" in spec, "clusterSelector" in spec
    if has_cluster == has_selector:
        c.fail(path, "set exactly one of rayClusterSpec (a cluster for this job) or clusterSelector "
               "(an existing RayCluster)")
    if has_cluster:
        _cluster_spec(c, c.mapping(spec["rayClusterSpec"], f"{path}.rayClusterSpec"), f"{path}.rayClusterSpec",
                      environment)
    if has_selector:
        selector = c.mapping(spec["clusterSelector"], f"{path}.clusterSelector")
        c.string(selector.get("ray.io/cluster"), f"{path}.clusterSelector.ray.io/cluster", required=True)
    if "jobId" in spec:
        c.fail(f"{path}.jobId", "is set by ray-gitops to the run id <env>-<name>-<hash10>; remove it")
    c.boolean(spec.get("shutdownAfterJobFinishes"), f"{path}.shutdownAfterJobFinishes")
    ttl = c.integer(spec.get("ttlSecondsAfterFinished"), f"{path}.ttlSecondsAfterFinished")
    if ttl and not spec.get("shutdownAfterJobFinishes"):
        c.fail(f"{path}.ttlSecondsAfterFinished", "a value > 0 requires shutdownAfterJobFinishes: true")
    _deletion_strategy(c, spec, path)
    for key in ("entrypointNumCpus", "entrypointNumGpus"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            c.fail(f"{path}.{key}", f"must be a number >= 0, got {short(value)}")
    runtime_env_yaml = c.string(spec.get("runtimeEnvYAML"), f"{path}.runtimeEnvYAML")
    if runtime_env_yaml:
        runtime_env(c, runtime_env_yaml, f"{path}.runtimeEnvYAML")


def _deletion_strategy(c: Checker, spec: dict[str, Any], path: str) -> None:
    """KubeRay 1.5's `deletionStrategy`, as its CRD rules say: `deletionRules` (each a policy and exactly one
    of `jobStatus`/`jobDeploymentStatus`, with `ttlSeconds`), not with `shutdownAfterJobFinishes` nor
    `ttlSecondsAfterFinished`; or the deprecated `onSuccess` and `onFailure`, both."""
    where = f"{path}.deletionStrategy"
    strategy = c.mapping(spec.get("deletionStrategy"), where)
    if not strategy:
        return
    rules = c.sequence(strategy.get("deletionRules"), f"{where}.deletionRules")
    legacy = [k for k in ("onSuccess", "onFailure") if k in strategy]
    if rules and legacy:
        c.fail(where, "deletionRules and onSuccess/onFailure cannot be used together")
    elif not rules and len(legacy) != 2:
        c.fail(where, "needs deletionRules, or both onSuccess and onFailure (deprecated)")
    if rules and (spec.get("shutdownAfterJobFinishes") or spec.get("ttlSecondsAfterFinished")):
        c.fail(where, "deletionRules replace shutdownAfterJobFinishes and ttlSecondsAfterFinished (use each "
               "rule's condition.ttlSeconds)")
    for key in legacy:
        c.one_of(c.mapping(strategy.get(key), f"{where}.{key}").get("policy"), f"{where}.{key}.policy",
                 DELETION_POLICIES)
    for i, rule in enumerate(rules):
        rpath = f"{where}.deletionRules[{i}]"
        rule = c.mapping(rule, rpath)
        c.one_of(rule.get("policy"), f"{rpath}.policy", DELETION_POLICIES)
        if rule.get("policy") is None:
            c.fail(f"{rpath}.policy", "required field is missing")
        condition = c.mapping(rule.get("condition"), f"{rpath}.condition", required=True)
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            c.fail(f"{rpath}.condition", "set exactly one of jobStatus or jobDeploymentStatus")
        c.one_of(condition.get("jobStatus"), f"{rpath}.condition.jobStatus", {"SUCCEEDED", "FAILED"})
        c.one_of(condition.get("jobDeploymentStatus"), f"{rpath}.condition.jobDeploymentStatus", {"Failed"})
        c.integer(condition.get("ttlSeconds"), f"{rpath}.condition.ttlSeconds")


def runtime_env(c: Checker, text: str, path: str = "spec.runtimeEnvYAML") -> None:
    """Parse `runtimeEnvYAML` (with the one YAML parser); a relative `working_dir` must stay inside the
    repository."""
    value, errors = parse.text(text, c.file, c.document, c.obj, path, c.budget)
    c.errors += errors
    env = c.mapping(value, path)
    working_dir = env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        if working_dir.startswith("/") or ".." in working_dir.split("/"):
            c.fail(f"{path}.working_dir", f"must be relative to the repository root and stay inside it, got "
                   f"{short(working_dir)}")
