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
from . import parse, validate
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
    loader behind `validate`, `plan`, `diff` and the daemon."""
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
    errors += [ValidationError(path, reason) for path, reason in tree.problems(directory)]
    objects: list[DesiredObject] = []
    seen: dict[ObjectRef, str] = {}
    for path in tree.files(directory):
        if path == env_file:
            continue
        if not path.endswith((".yaml", ".yml")):
            errors.append(ValidationError(path, "only YAML files (.yaml, .yml) belong in an environment directory"))
            continue
        file_docs, file_errors = _read(tree, path)
        errors += file_errors
        for index, doc in enumerate(file_docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                errors.append(ValidationError(path, f"must be a mapping (an object), got {type(doc).__name__}", index))
                continue
            doc_errors = validate.ray_object(doc, path, index, spec, supported)
            if doc_errors:
                errors += doc_errors
                continue
            ref = ObjectRef.of(doc, spec.target.namespace)
            if ref in seen:
                errors.append(ValidationError(path, f"duplicate object, first defined in {seen[ref]}", index, str(ref)))
                continue
            seen[ref] = f"{path}#{index}"
            objects.append(DesiredObject(ref, _owned(doc, ref, environment, revision), path, index))
    if len(objects) > MAX_OBJECTS:
        errors.append(ValidationError(directory, f"{len(objects)} objects: an environment holds at most "
                                      f"{MAX_OBJECTS} (split it into several environments)"))
    if errors:
        raise InvalidEnvironment(environment, errors)
    return RenderedEnvironment(spec, tuple(objects), revision)


def _owned(doc: dict[str, Any], ref: ObjectRef, environment: str, revision: str) -> dict[str, Any]:
    """A copy of `doc` with namespace, ownership labels and the revision annotation set."""
    meta = dict(doc.get("metadata") or {})
    meta["namespace"] = ref.namespace
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: environment}
    if revision:
        meta["annotations"] = {**(meta.get("annotations") or {}), REVISION_ANNOTATION: revision}
    return {**doc, "metadata": meta}
