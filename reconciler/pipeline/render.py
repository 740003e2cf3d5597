"""Render stage: `environments/<env>/` of one revision -> the environment's settings and objects.

Called by the daemon and the CLI with a `FileTree`. Every YAML document is parsed and validated;
all errors of an environment are collected and raised together as `InvalidEnvironment`, so a
broken environment applies nothing (and prunes nothing). Adds the ownership labels/annotation.
"""
from __future__ import annotations

from typing import Any

from dataclasses import dataclass

from ..errors import InvalidEnvironment, ValidationError
from ..model import (ENVIRONMENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, REVISION_ANNOTATION, DesiredObject,
                     EnvironmentSpec, ObjectRef, RenderedEnvironment, TargetSpec)
from . import overlay, parse, validate
from .source import FileTree

ROOT = "environments"
ENVIRONMENT_FILE = "environment.yaml"
MAX_OBJECTS = 1000  # per environment


def list_environments(tree: FileTree) -> list[str]:
    """Names of the directories under `environments/` that hold an `environment.yaml`."""
    names = {path.split("/")[1] for path in tree.files(ROOT) if path.count("/") == 2
             and path.endswith("/" + ENVIRONMENT_FILE)}
    return sorted(names)


@dataclass(frozen=True)
class _UnknownTarget:
    """Stands in while `environment.yaml` is broken, so the object files are still checked."""

    namespace: str = "default"
    namespaces: frozenset[str] = frozenset({"default"})

    def connection(self) -> tuple[()]:
        return ()


def _read(tree: FileTree, path: str) -> tuple[list[Any], list[ValidationError]]:
    return parse.documents(tree.read(path), path)


def render(tree: FileTree, environment: str, revision: str, targets: validate.TargetCatalog) -> RenderedEnvironment:
    """Render and validate one environment; raise `InvalidEnvironment` with every error found. The one
    loader behind `validate`, `render`, `plan`, `diff` and the daemon.

    The objects are those of `spec.base` (if any), then those of the environment directory (an object of
    the same kind, namespace and name replaces the base's), then `spec.patches` in order, then
    `spec.substitute`; each final object is validated, its errors naming the file it came from."""
    directory = f"{ROOT}/{environment}"
    env_file = f"{directory}/{ENVIRONMENT_FILE}"
    if not validate.dns_label(environment):
        raise InvalidEnvironment(validate.short(environment), [ValidationError(
            f"{ROOT}/{validate.short(environment)}", "an environment name must be a DNS-1123 label (a-z, 0-9, '-', "
            "at most 63 characters): it becomes a label value and part of object names")])
    if not tree.exists(env_file):
        raise InvalidEnvironment(environment, [ValidationError(env_file, "file not found")])
    docs, errors = _read(tree, env_file)
    present = [d for d in docs if d is not None]
    if not errors and len(present) != 1:
        errors.append(ValidationError(env_file, "must hold exactly one Environment document"))
    parsed, env_errors = validate.environment(present[0] if present else None, env_file, environment, targets)
    errors += env_errors
    # Object files are checked even when environment.yaml is broken, so every error shows at once.
    spec = parsed or EnvironmentSpec(environment, TargetSpec("unknown", _UnknownTarget()))
    supported = targets.kinds(spec.target.kind) if parsed else frozenset(k for _, k in validate.KINDS)
    target_check = (lambda doc, c: targets.check(spec.target.kind, doc, c, spec)) if parsed else None
    errors += _dependency_errors(tree, spec, env_file)
    sources: dict[ObjectRef, _Source] = {}
    if spec.base:
        if not any(True for _ in tree.files(spec.base)) and not any(True for _ in tree.problems(spec.base)):
            errors.append(ValidationError(env_file, f"no such directory in the repository: {spec.base}", None,
                                          f"Environment/{environment}", "spec.base"))
        errors += _collect(tree, spec.base, spec, sources, skip="")
    errors += _collect(tree, directory, spec, sources, skip=env_file)
    errors += _patch(spec, sources, env_file)
    objects: list[DesiredObject] = []
    for ref, source in sources.items():
        doc = source.doc
        if spec.substitute:
            try:
                doc = overlay.substitute(doc, dict(spec.substitute))
            except overlay.OverlayError as exc:
                errors.append(ValidationError(source.file, exc.reason, source.document, str(ref), exc.path))
                continue
        doc_errors, warnings = validate.ray_object(doc, source.file, source.document, spec, supported, target_check)
        if doc_errors:
            errors += doc_errors
            continue
        objects.append(DesiredObject(ref, _owned(doc, ref, environment, revision), source.file, source.document,
                                     tuple(f"{w.path}: {w.reason}" for w in warnings)))
    if len(objects) > MAX_OBJECTS:
        errors.append(ValidationError(directory, f"{len(objects)} objects: an environment holds at most "
                                      f"{MAX_OBJECTS} (split it into several environments)"))
    if errors:  # environment.yaml's first, then by file and document: the same order every time
        errors.sort(key=lambda e: (e.file != env_file, e.file, -1 if e.document is None else e.document))
        raise InvalidEnvironment(environment, errors)
    return RenderedEnvironment(spec, tuple(objects), revision)


def depends_on(tree: FileTree, environment: str) -> tuple[str, ...]:
    """The environments `environment` names in `spec.dependsOn` (read leniently: only for the graph)."""
    docs, errors = _read(tree, f"{ROOT}/{environment}/{ENVIRONMENT_FILE}") if tree.exists(
        f"{ROOT}/{environment}/{ENVIRONMENT_FILE}") else ([], [])
    doc = next((d for d in docs if d is not None), None)
    spec = doc.get("spec") if isinstance(doc, dict) else None
    entries = spec.get("dependsOn") if isinstance(spec, dict) else None
    return tuple(e["environment"] for e in entries or [] if isinstance(e, dict) and isinstance(e.get("environment"), str)) \
        if isinstance(entries, list) and not errors else ()


def _dependency_errors(tree: FileTree, spec: EnvironmentSpec, env_file: str) -> list[ValidationError]:
    """Every environment in `spec.dependsOn` exists, and following them never leads back here."""
    errors, existing = [], set(list_environments(tree)) if spec.depends_on else set()
    for i, other in enumerate(spec.depends_on):
        if other not in existing:
            errors.append(ValidationError(env_file, f"no environment {other} in this revision", None,
                                          f"Environment/{spec.name}", f"spec.dependsOn[{i}].environment"))
    path, todo, seen = {spec.name: [spec.name]}, [spec.name], {spec.name}
    while todo:
        current = todo.pop()
        for other in (spec.depends_on if current == spec.name else depends_on(tree, current)):
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
    """An object document and where it came from (a base file or the environment's own)."""

    doc: dict[str, Any]
    file: str
    document: int


def _collect(tree: FileTree, directory: str, spec: EnvironmentSpec, sources: dict[ObjectRef, _Source],
             skip: str) -> list[ValidationError]:
    """Read every object file of `directory` into `sources`: an object replaces one read from another
    directory (the base's); a repeat within `directory` is an error."""
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
        file_docs, file_errors = _read(tree, path)
        errors += file_errors
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


def _patch(spec: EnvironmentSpec, sources: dict[ObjectRef, _Source], env_file: str) -> list[ValidationError]:
    """Apply `spec.patches` in order; an error names the patch and the field."""
    errors = []
    for i, patch in enumerate(spec.patches):
        where = f"spec.patches[{i}]"
        matches = [ref for ref in sources if (ref.kind, ref.name) == (patch.kind, patch.name)]
        if not matches:
            errors.append(ValidationError(env_file, f"no {patch.kind} named {patch.name} to patch", None,
                                          f"Environment/{spec.name}", f"{where}.target"))
            continue
        for ref in matches:
            source = sources[ref]
            try:
                doc = (overlay.merge(source.doc, patch.patch) if isinstance(patch.patch, dict)
                       else overlay.json_patch(source.doc, patch.patch))
            except overlay.OverlayError as exc:
                field = f"{where}.patch" + (f" ({exc.path})" if exc.path else "")
                errors.append(ValidationError(env_file, exc.reason, None, str(ref), field))
                continue
            if ObjectRef.of(doc, spec.target.namespace) != ref:
                errors.append(ValidationError(env_file, "a patch may not change an object's kind, name or namespace",
                                              None, str(ref), f"{where}.patch"))
                continue
            sources[ref] = _Source(doc, source.file, source.document)
    return errors


def _owned(doc: dict[str, Any], ref: ObjectRef, environment: str, revision: str) -> dict[str, Any]:
    """A copy of `doc` with namespace, ownership labels and the revision annotation set."""
    meta = dict(doc.get("metadata") or {})
    meta["namespace"] = ref.namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: environment}
    if revision:
        meta["annotations"] = {**(meta.get("annotations") or {}), REVISION_ANNOTATION: revision}
    return {**doc, "metadata": meta}
