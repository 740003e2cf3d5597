"""Render stage: `environments/<env>/` of one revision -> the environment's settings and objects.

Called by the daemon and the CLI with a `FileTree`. Every YAML document is parsed and validated;
all errors of an environment are collected and raised together as `InvalidEnvironment`, so a
broken environment applies nothing (and prunes nothing). Adds the ownership labels/annotation.
One `Budget` per environment bounds the documents, bytes and CPU time of all of it: the first one
to run out ends the render with an error naming the file (and object and field) where it did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import kuberay
from ..errors import InvalidEnvironment, ValidationError
from ..model import (
    ENVIRONMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    REVISION_ANNOTATION,
    DesiredObject,
    EnvironmentSpec,
    ObjectRef,
    Patch,
    RenderedEnvironment,
    TargetSpec,
)
from . import budgets, overlay, parse, validate
from .source import FileTree

ROOT = "environments"
ENVIRONMENT_FILE = "environment.yaml"


def list_environments(tree: FileTree) -> list[str]:
    """Names of the directories under `environments/` that hold an `environment.yaml`."""
    names = {path.split("/")[1] for path in tree.files(ROOT) if path.count("/") == 2
             and path.endswith("/" + ENVIRONMENT_FILE)}
    return sorted(names)


def in_git(tree: FileTree, environment: str) -> bool:
    """`environments/<environment>/` is still in the revision: a file, or an entry that could not be read (a
    symbolic link, a file over the size limits). A broken environment has not left Git: it fails, nothing is pruned."""
    directory = f"{ROOT}/{environment}"
    return any(True for _ in tree.files(directory)) or any(True for _ in tree.problems(directory))


@dataclass(frozen=True)
class _UnknownTarget:
    """Stands in while `environment.yaml` is broken, so the object files are still checked."""

    namespace: str = "default"
    namespaces: frozenset[str] = frozenset({"default"})

    def connection(self) -> tuple[()]:
        return ()


def _read(tree: FileTree, path: str, budget: budgets.Budget | None = None) -> tuple[list[Any], list[ValidationError]]:
    return parse.documents(tree.read(path), path, budget)


def render(tree: FileTree, environment: str, revision: str, targets: validate.TargetCatalog) -> RenderedEnvironment:
    """Render and validate one environment; raise `InvalidEnvironment` with every error found. The one
    loader behind `validate`, `render`, `plan`, `diff` and the daemon.

    The objects are those of `spec.base` (if any), then those of the environment directory (an object of
    the same kind, namespace and name replaces the base's), then `spec.patches` in order, then
    `spec.substitute`; each final object is validated, identity included (kind, name and namespace as
    substitution left them), its errors naming the file it came from."""
    directory = f"{ROOT}/{environment}"
    env_file = f"{directory}/{ENVIRONMENT_FILE}"
    if not validate.dns_label(environment):
        raise InvalidEnvironment(validate.short(environment), [ValidationError(
            f"{ROOT}/{validate.short(environment)}", "an environment name must be a DNS-1123 label (a-z, 0-9, '-', "
            "at most 63 characters): it becomes a label value and part of object names")])
    if not tree.exists(env_file):  # why it could not be read (a symbolic link, too large), if it is there
        unread = [ValidationError(path, reason) for path, reason in tree.problems(directory)]
        missing = [] if any(e.file == env_file for e in unread) else [ValidationError(env_file, "file not found")]
        raise InvalidEnvironment(environment, missing + unread)
    budget = budgets.Budget()
    docs, errors = _read(tree, env_file, budget)
    present = [d for d in docs if d is not None]
    if not errors and len(present) != 1:
        errors.append(ValidationError(env_file, "must hold exactly one Environment document"))
    parsed, env_errors = validate.environment(present[0] if present else None, env_file, environment, targets)
    errors += env_errors
    # Object files are checked even when environment.yaml is broken, so every error shows at once.
    spec = parsed or EnvironmentSpec(environment, TargetSpec("unknown", _UnknownTarget()))
    supported = targets.kinds(spec.target.kind) if parsed else kuberay.NAMES
    target_check = (lambda doc, c: targets.check(spec.target.kind, doc, c, spec)) if parsed else None
    errors += _dependency_errors(tree, spec, env_file, budget)
    sources: dict[ObjectRef, _Source] = {}
    if spec.base and not budget.exhausted:
        if not any(True for _ in tree.files(spec.base)) and not any(True for _ in tree.problems(spec.base)):
            errors.append(ValidationError(env_file, f"no such directory in the repository: {spec.base}", None,
                                          f"Environment/{environment}", "spec.base"))
        errors += _collect(tree, spec.base, spec, sources, "", budget)
    if not budget.exhausted:
        errors += _collect(tree, directory, spec, sources, env_file, budget)
    failed: set[ObjectRef] = set()
    if not budget.exhausted:
        errors += _patch(spec, sources, env_file, budget, failed)
    variables = dict(spec.substitute) or None
    objects: dict[ObjectRef, DesiredObject] = {}
    for ref, source in sources.items():
        if budget.exhausted:
            break
        if ref in failed:
            continue
        try:
            budget.check_time()
            doc = overlay.substitute(source.doc, variables, budget)
        except overlay.OverlayError as exc:
            errors += _blamed([ValidationError(source.file, e.reason, source.document, str(ref), e.path)
                               for e in exc.errors], source, env_file)
            continue
        except budgets.Exhausted as exc:
            errors.append(ValidationError(source.file, exc.reason, source.document, str(ref)))
            break
        doc_errors, warnings = validate.ray_object(doc, source.file, source.document, spec, supported, target_check,
                                                   budget)
        if doc_errors:
            errors += _blamed(doc_errors, source, env_file)
            continue
        final = ObjectRef.of(doc, spec.target.namespace)  # substitution may have set the kind, name or namespace
        if final in objects:
            first = objects[final]
            errors.append(ValidationError(source.file, f"duplicate object after substitution, first defined in "
                                          f"{first.file}#{first.document}", source.document, str(final)))
            continue
        objects[final] = DesiredObject(final, _owned(doc, final, environment, revision), source.file, source.document,
                                       tuple(f"{w.path}: {w.reason}" for w in warnings))
    if errors:  # environment.yaml's first, then by file and document: the same order every time
        errors.sort(key=lambda e: (e.file != env_file, e.file, -1 if e.document is None else e.document))
        raise InvalidEnvironment(environment, errors)
    return RenderedEnvironment(spec, tuple(objects.values()), revision)


def depends_on(tree: FileTree, environment: str, budget: budgets.Budget | None = None) -> tuple[str, ...]:
    """The environments `environment` names in `spec.dependsOn` (read leniently: only for the graph)."""
    path = f"{ROOT}/{environment}/{ENVIRONMENT_FILE}"
    docs, errors = _read(tree, path, budget) if tree.exists(path) else ([], [])
    doc = next((d for d in docs if d is not None), None)
    spec = doc.get("spec") if isinstance(doc, dict) else None
    entries = spec.get("dependsOn") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or errors:
        return ()
    return tuple(e["environment"] for e in entries if isinstance(e, dict) and isinstance(e.get("environment"), str))


def waves(graph: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """`graph`'s environments (name -> the ones it depends on) in waves: each after every one it depends on that
    is in the graph. What a cycle leaves goes last (its validation reports the cycle)."""
    out: list[list[str]] = []
    placed: set[str] = set()
    while len(placed) < len(graph):
        wave = sorted(n for n, deps in graph.items() if n not in placed and all(d in placed or d not in graph
                                                                                 for d in deps))
        wave = wave or sorted(set(graph) - placed)
        out.append(wave)
        placed.update(wave)
    return out


def _dependency_errors(tree: FileTree, spec: EnvironmentSpec, env_file: str,
                       budget: budgets.Budget) -> list[ValidationError]:
    """Every environment in `spec.dependsOn` exists, and following them never leads back here."""
    errors, existing = [], set(list_environments(tree)) if spec.depends_on else set()
    for i, other in enumerate(spec.depends_on):
        if other not in existing:
            errors.append(ValidationError(env_file, f"no environment {other} in this revision", None,
                                          f"Environment/{spec.name}", f"spec.dependsOn[{i}].environment"))
    path, todo, seen = {spec.name: [spec.name]}, [spec.name], {spec.name}
    while todo and not budget.exhausted:
        current = todo.pop()
        others = spec.depends_on if current == spec.name else depends_on(tree, current, budget)
        if budget.exhausted:  # reading that environment's file ran it out
            return errors + [ValidationError(f"{ROOT}/{current}/{ENVIRONMENT_FILE}", budget.exhausted)]
        for other in others:
            if other == spec.name:
                cycle = " -> ".join([*path[current], other])
                return errors + [ValidationError(env_file, f"dependsOn makes a cycle: {cycle}", None,
                                                 f"Environment/{spec.name}", "spec.dependsOn")]
            if other in existing and other not in seen:
                seen.add(other)
                path[other] = [*path[current], other]
                todo.append(other)
    return errors


@dataclass
class _Source:
    """An object document, where it came from (a base file or the environment's own) and the patches applied
    to it (index in `spec.patches`, patch)."""

    doc: dict[str, Any]
    file: str
    document: int
    patches: list[tuple[int, Patch]] = field(default_factory=list)


def _blamed(errors: list[ValidationError], source: _Source, env_file: str) -> list[ValidationError]:
    """`errors` of an object, each in a field a patch set named on that patch (the last one to set it)
    instead of the object's file: `spec.patches[1].patch[0] (data.plain)`."""
    if not source.patches:
        return errors
    setters: dict[str, tuple[int, int]] = {}  # field -> (patch, operation or -1): the last to set it
    for i, patch in source.patches:
        for at, operation in overlay.written(patch.patch, source.doc):
            setters[at] = (i, -1 if operation is None else operation)
    out = []
    for error in errors:
        by = max((setters[p] for p in _enclosing(error.path) if p in setters), default=None)
        if by is None:
            out.append(error)
            continue
        where = f"spec.patches[{by[0]}].patch" + (f"[{by[1]}]" if by[1] >= 0 else "")
        out.append(ValidationError(env_file, error.reason, None, error.object, f"{where} ({error.path})"))
    return out


def _enclosing(path: str) -> list[str]:
    """`path`, every field it is inside (`a.b[0]` -> `a.b`, `a`) and the whole object ("")."""
    return [path, *(path[:i] for i, c in enumerate(path) if c in ".["), ""]


def _collect(tree: FileTree, directory: str, spec: EnvironmentSpec, sources: dict[ObjectRef, _Source],
             skip: str, budget: budgets.Budget) -> list[ValidationError]:
    """Read every object file of `directory` into `sources`: an object replaces one read from another
    directory (the base's); a repeat within `directory` is an error. Stops when the budget runs out."""
    errors = [ValidationError(path, reason) for path, reason in tree.problems(directory)]
    here: set[ObjectRef] = set()
    for path in tree.files(directory):
        if path == skip:
            continue
        if not path.endswith((".yaml", ".yml")):
            errors.append(ValidationError(path, "only YAML files (.yaml, .yml) belong in an environment directory"))
            continue
        if path.rsplit("/", 1)[-1] == ENVIRONMENT_FILE:
            errors.append(ValidationError(path, "a base holds objects, not an Environment"))
            continue
        file_docs, file_errors = _read(tree, path, budget)
        errors += file_errors
        try:
            budget.check_time()
        except budgets.Exhausted as exc:
            errors.append(ValidationError(path, exc.reason))
            break
        try:
            budget.read(len(file_docs))
        except budgets.Exhausted as exc:  # at the document where the environment passed its limit
            errors.append(ValidationError(path, exc.reason, len(file_docs) + budget.documents))
            break
        for index, doc in enumerate(file_docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                errors.append(ValidationError(path, f"must be a mapping (an object), got {type(doc).__name__}", index))
                continue
            ref = ObjectRef.of(doc, spec.target.namespace)
            if ref in here:
                first = sources[ref]
                errors.append(ValidationError(path, f"duplicate object, first defined in {first.file}#{first.document}",
                                              index, str(ref)))
                continue
            here.add(ref)
            sources[ref] = _Source(doc, path, index)
    return errors


def _patch(spec: EnvironmentSpec, sources: dict[ObjectRef, _Source], env_file: str, budget: budgets.Budget,
           failed: set[ObjectRef]) -> list[ValidationError]:
    """Apply `spec.patches` in order, in place; an error names the patch (and the JSON patch operation) and
    the field, and adds the object to `failed` (a patch may have been applied in part)."""
    errors = []
    targets: dict[tuple[str, str], list[ObjectRef]] = {}
    for ref in sources:
        targets.setdefault((ref.kind, ref.name), []).append(ref)
    for i, patch in enumerate(spec.patches):
        where = f"spec.patches[{i}]"
        if (patch.kind, patch.name) not in targets:
            errors.append(ValidationError(env_file, f"no {patch.kind} named {patch.name} to patch", None,
                                          f"Environment/{spec.name}", f"{where}.target"))
            continue
        for ref in targets[(patch.kind, patch.name)]:
            if ref in failed:
                continue
            source = sources[ref]
            try:
                budget.check_time()
                doc = (overlay.merge(source.doc, patch.patch, budget) if isinstance(patch.patch, dict)
                       else overlay.json_patch(source.doc, patch.patch, budget))
            except overlay.OverlayError as exc:
                field = (f"{where}.patch" + (f"[{exc.operation}]" if exc.operation is not None else "")
                         + (f" ({exc.path})" if exc.path else ""))
                error = ValidationError(env_file, exc.reason, None, str(ref), field)
            except budgets.Exhausted as exc:
                error = ValidationError(env_file, exc.reason, None, str(ref), where)
            else:
                if ObjectRef.of(doc, spec.target.namespace) == ref:
                    source.doc = doc
                    source.patches.append((i, patch))
                    continue
                error = ValidationError(env_file, "a patch may not change an object's kind, name or namespace", None,
                                        str(ref), f"{where}.patch")
            errors.append(error)
            failed.add(ref)
            if budget.exhausted:
                return errors
    return errors


def _owned(doc: dict[str, Any], ref: ObjectRef, environment: str, revision: str) -> dict[str, Any]:
    """A copy of `doc` with namespace, ownership labels and the revision annotation set."""
    meta = dict(doc.get("metadata") or {})
    meta["namespace"] = ref.namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: environment}
    if revision:
        meta["annotations"] = {**(meta.get("annotations") or {}), REVISION_ANNOTATION: revision}
    return {**doc, "metadata": meta}
