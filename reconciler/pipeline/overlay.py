"""Overlays: how an environment changes the objects of a shared base. Pure functions on JSON values.

- `merge`: a merge patch (RFC 7386: `null` deletes a field, maps merge, other values replace) where
  lists of named items merge item by item, as KubeRay users think of them: worker groups by
  `groupName`, containers, env vars, volumes and ports by `name` (`LIST_KEYS`, kept as data). An
  item `{<key>: x, $patch: delete}` removes item x.
- `json_patch`: an RFC 6902 JSON patch, applied by the `jsonpatch` package.
- `substitute`: `${VAR}` in string values from the environment's `spec.substitute`; a value that is
  exactly `${VAR}` takes the variable's type (so `replicas: ${REPLICAS}` stays a number);
  `$${VAR}` is a literal `${VAR}` (shell variables in entrypoints survive); an undefined variable is
  an error (Flux silently makes it empty, a known trap).
Errors are `OverlayError(path, reason)`, the path in the object (`spec.workerGroupSpecs[cpu].replicas`).
"""
from __future__ import annotations

import copy
import re
from typing import Any, Mapping

import jsonpatch

LIST_KEYS = {"workerGroupSpecs": "groupName", "containers": "name", "initContainers": "name", "env": "name",
             "volumes": "name", "volumeMounts": "name", "ports": "name", "imagePullSecrets": "name"}
DELETE = "$patch"
_VARIABLE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


class OverlayError(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def merge(target: Any, patch: Any, path: str = "") -> Any:
    """`target` with the merge patch applied (neither is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in LIST_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, LIST_KEYS[key], _at(path, key))
        else:
            out[key] = merge(out.get(key), value, _at(path, key))
    return out


def _merge_list(items: list[Any], patch: list[Any], key: str, path: str) -> list[Any]:
    out = list(items)
    index = {item.get(key): i for i, item in enumerate(out) if isinstance(item, dict)}
    for i, change in enumerate(patch):
        name = change.get(key) if isinstance(change, dict) else None
        if not isinstance(name, str):
            raise OverlayError(f"{path}[{i}]", f"items of {path.rsplit('.', 1)[-1]} merge by {key}; this one has none")
        if change.get(DELETE) == "delete":
            if name not in index:
                raise OverlayError(f"{path}[{name}]", "cannot delete: no such item")
            out[index[name]] = None
        elif name in index:
            out[index[name]] = merge(out[index[name]], change, f"{path}[{name}]")
        else:
            index[name] = len(out)
            out.append(copy.deepcopy(change))
    return [item for item in out if item is not None]


def json_patch(target: dict[str, Any], operations: list[Any]) -> dict[str, Any]:
    """`target` with an RFC 6902 patch applied (with the `jsonpatch` package; `target` is not changed)."""
    try:
        result = jsonpatch.JsonPatch(operations).apply(target)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError,
            ValueError) as exc:
        raise OverlayError("", f"JSON patch failed: {exc}") from None
    if not isinstance(result, dict):
        raise OverlayError("", "a JSON patch must leave an object (a mapping)")
    return result


def substitute(node: Any, variables: Mapping[str, Any], path: str = "") -> Any:
    """`node` with `${VAR}` replaced in every string value (keys are left alone)."""
    if isinstance(node, dict):
        return {key: substitute(value, variables, _at(path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(item, variables, f"{path}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node
    whole = _VARIABLE.fullmatch(node)
    if whole and not whole.group(1):
        return _value(whole.group(2), variables, path)

    def replace(match: re.Match[str]) -> str:
        if match.group(1):  # $${VAR}: the literal ${VAR}
            return "${" + match.group(2) + "}"
        value = _value(match.group(2), variables, path)
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    return _VARIABLE.sub(replace, node)


def _value(name: str, variables: Mapping[str, Any], path: str) -> Any:
    if name not in variables:
        raise OverlayError(path, f"${{{name}}} is not defined in spec.substitute (write $${{{name}}} for a literal "
                           f"${{{name}}})")
    return variables[name]
