"""Overlays: how an environment changes the objects of a shared base. Functions on JSON values that change
the object they are given in place (the render owns it) and spend what they add from the render's `Budget`
before adding it.

- `merge`: a merge patch (RFC 7386: `null` deletes a field, maps merge, other values replace) where
  lists of named items merge item by item, as KubeRay users think of them: worker groups by
  `groupName`, containers, env vars, volumes and ports by `name` (`LIST_KEYS`, kept as data). An
  item `{<key>: x, $patch: delete}` removes item x.
- `json_patch`: an RFC 6902 JSON patch of at most `MAX_OPERATIONS` operations, applied one operation at a
  time by the `jsonpatch` package (so no operation copies the whole object, and what `add`, `replace` and
  `copy` bring is counted before it is made).
- `substitute`: `${VAR}` in string values from the environment's `spec.substitute`, and Flux's (envsubst's)
  defaults: `${VAR-default}` and `${VAR=default}` (the default when VAR is undefined), `${VAR:-default}` and
  `${VAR:=default}` (also when it is empty); a default naming a variable (`${A:-${B}}`) is an error; a value written
  bare as exactly one of these takes the variable's type, or the default's as YAML reads it (so
  `replicas: ${REPLICAS:=2}` stays a number), one written quoted stays a string (`parse.Quoted`);
  `$${VAR}` is a literal `${VAR}` (shell variables in entrypoints survive); an undefined variable is
  an error, every one of an object reported (Flux silently makes it empty, a known trap). A string comes
  to at most `MAX_STRING_BYTES`, measured before it is built.
- `written`: the fields of an object a patch set, so an error found later in one is named on the patch.
Errors are `OverlayError(path, reason, operation)`: the path in the object (`spec.workerGroupSpecs[cpu].replicas`),
or for a JSON patch the operation's index, name and pointer. No message ever holds a value from the object
or the patch (a Secret's value would land in logs, the ledger and the status page).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeGuard

import jsonpatch
import jsonpointer

from .budgets import MAX_REPORTED, MAX_STRING_BYTES, Budget, Exhausted, measure
from .parse import MAX_DEPTH, Quoted, plain

LIST_KEYS = {"workerGroupSpecs": "groupName", "containers": "name", "initContainers": "name", "env": "name",
             "volumes": "name", "volumeMounts": "name", "ports": "name", "imagePullSecrets": "name"}
DELETE = "$patch"
MAX_OPERATIONS = 100  # per JSON patch
_OPERATIONS = ("add", "copy", "move", "remove", "replace", "test")
_VARIABLE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)[-=]([^}]*))?\}")  # $${..}: literal; the
# default's operator with or without its colon, then the default (literal text up to the first `}`)
_MISSING = object()


class OverlayError(Exception):
    def __init__(self, path: str, reason: str, operation: int | None = None) -> None:
        super().__init__(reason)
        self.path, self.reason, self.operation = path, reason, operation

    @property
    def errors(self) -> list[OverlayError]:
        return [self]


class Undefined(OverlayError):
    """Every field of an object that names an undefined variable (or one in a default), one `OverlayError` each."""

    def __init__(self, errors: list[OverlayError]) -> None:
        super().__init__(errors[0].path, errors[0].reason)
        self._errors = errors

    @property
    def errors(self) -> list[OverlayError]:
        return self._errors


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _spend(budget: Budget, value: Any, path: str, operation: int | None = None) -> int:
    """Spend what `value` counts (measured no further than the budget left) before it is copied in; its height."""
    spent, height = measure(value, max(budget.bytes, 0))
    try:
        budget.spend(spent)
    except Exhausted as exc:
        raise OverlayError(path, exc.reason, operation) from None
    return height


def merge(target: Any, patch: Any, budget: Budget) -> Any:
    """`target` with the merge patch applied: changed in place where it is a map, the patch's values copied."""
    _spend(budget, patch, "")
    return _merge(target, patch, "")


def _merge(target: Any, patch: Any, path: str) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in LIST_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            _merge_list(out[key], value, LIST_KEYS[key], _at(path, key))
        else:
            out[key] = _merge(out.get(key), value, _at(path, key))
    return out


def _merge_list(items: list[Any], patch: list[Any], key: str, path: str) -> None:
    index = {item.get(key): i for i, item in enumerate(items) if isinstance(item, dict)}
    for i, change in enumerate(patch):
        name = change.get(key) if isinstance(change, dict) else None
        if not isinstance(name, str):
            raise OverlayError(f"{path}[{i}]", f"items of {path.rsplit('.', 1)[-1]} merge by {key}; this one has none")
        if change.get(DELETE) == "delete":
            if name not in index:
                raise OverlayError(f"{path}[{name}]", "cannot delete: no such item")
            items[index.pop(name)] = None
        elif name in index:
            items[index[name]] = _merge(items[index[name]], change, f"{path}[{name}]")
        else:
            index[name] = len(items)
            items.append(copy.deepcopy(change))
    items[:] = [item for item in items if item is not None]


def json_patch(target: dict[str, Any], operations: list[Any], budget: Budget) -> dict[str, Any]:
    """`target` with an RFC 6902 patch applied in place, one operation at a time. What `add` and `replace`
    bring, and what `copy` and `move` take, is measured and spent first (a `move` counts as a copy: that
    bounds the cost of measuring it). A failed operation leaves those before it applied: the caller drops
    the object, whose environment is invalid anyway."""
    if len(operations) > MAX_OPERATIONS:
        raise OverlayError("", f"{len(operations)} operations: a JSON patch holds at most {MAX_OPERATIONS} (split "
                           "it into several patches)")
    doc: Any = target
    for i, operation in enumerate(operations):
        name, pointer = _checked(operation, i)
        where = f"{name} {_shown(pointer)}"
        try:
            budget.check_time()
        except Exhausted as exc:
            raise OverlayError(where, exc.reason, i) from None
        source = operation["from"] if name in ("copy", "move") else pointer
        found = jsonpointer.resolve_pointer(doc, source, _MISSING) if name != "add" else None
        if found is _MISSING or isinstance(found, jsonpointer.EndOfList):
            raise OverlayError(where, f"no such location in the object{'' if source == pointer else ' (from)'}", i)
        if name in ("add", "replace", "copy", "move"):
            height = _spend(budget, operation["value"] if name in ("add", "replace") else found, where, i)
            if pointer.count("/") + height > MAX_DEPTH:
                raise OverlayError(where, f"would nest the object deeper than {MAX_DEPTH} levels", i)
        try:
            doc = jsonpatch.JsonPatch([operation]).apply(doc, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise OverlayError(where, "value does not match", i) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError, IndexError,
                ValueError):  # their texts may quote the object: never shown
            raise OverlayError(where, "cannot be applied at this location", i) from None
    if not isinstance(doc, dict):
        raise OverlayError("", "a JSON patch must leave an object (a mapping)")
    return doc


def _checked(operation: Any, i: int) -> tuple[str, str]:
    """The operation's name and pointer, if it is well formed (each error names the operation, no value)."""
    if not isinstance(operation, dict) or operation.get("op") not in _OPERATIONS:
        raise OverlayError("", f"must be a mapping whose op is one of {', '.join(_OPERATIONS)}", i)
    name, pointer = operation["op"], operation.get("path")
    if not _pointer(pointer):
        raise OverlayError(name, "path must be a JSON pointer: empty or starting with /", i)
    if name in ("add", "replace", "test") and "value" not in operation:
        raise OverlayError(f"{name} {_shown(pointer)}", "needs a value", i)
    if name in ("move", "copy") and not _pointer(operation.get("from")):
        raise OverlayError(f"{name} {_shown(pointer)}", "from must be a JSON pointer: empty or starting with /", i)
    return name, pointer


def _pointer(value: Any) -> TypeGuard[str]:
    try:
        return isinstance(value, str) and (value == "" or jsonpointer.JsonPointer(value) is not None)
    except jsonpointer.JsonPointerException:  # no leading /, or ~ not followed by 0 or 1
        return False


def _shown(pointer: str) -> str:
    return pointer if len(pointer) <= 100 else pointer[:100] + "..."


def substitute(node: Any, variables: Mapping[str, Any] | None, budget: Budget) -> Any:
    """`node` with `${VAR}` replaced in every string value (keys are left alone); in place in maps and lists.
    `variables` None (no `spec.substitute`): nothing is substituted. Raises `Undefined`, naming every field
    with an undefined variable or a variable in a default (the first `MAX_REPORTED`, then how many more), before
    anything is changed."""
    if variables is not None:
        undefined: list[OverlayError] = []
        more = 0
        for path, text in _strings(node, ""):
            reason = _nested(text) or _undefined(_missing(text, variables))
            if reason and len(undefined) < MAX_REPORTED:
                undefined.append(OverlayError(path, reason))
            elif reason:
                more += 1
        if more:
            undefined.append(OverlayError("", f"{more} more fields name undefined variables"))
        if undefined:
            raise Undefined(undefined)
    return _substitute(node, variables, budget, "")


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, text) of every string value of `node` that may name a variable."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, _at(path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield path, node


def _missing(text: str, variables: Mapping[str, Any]) -> list[str]:
    """The undefined variables `text` names without a default, each once."""
    names = [m.group(2) for m in _VARIABLE.finditer(text) if not m.group(1) and m.group(4) is None
             and m.group(2) not in variables]
    return list(dict.fromkeys(names))


def _nested(text: str) -> str:
    """Why `text` cannot be substituted when a default names a variable (`${A:-${B}}`): a default is literal text
    up to the first `}`, so it would come out as B's name and a stray `}`. "" when none does."""
    found = next((m for m in _VARIABLE.finditer(text) if not m.group(1) and "${" in (m.group(4) or "")), None)
    if found is None:
        return ""
    written = found.group(0)[:found.start(4) - found.start()]  # `${A:-`, as written (no value from the default)
    return (f"{written}${{...}}}}: a default cannot name a variable (it is literal text up to the first }}); "
            "write its value")


def _undefined(names: list[str]) -> str:
    """The reason for a field naming the undefined variables `names`; "" when there are none."""
    if not names:
        return ""
    shown = ", ".join(f"${{{n}}}" for n in names)
    return (f"{shown} {'is' if len(names) == 1 else 'are'} not defined in spec.substitute (write $${{{names[0]}}} for "
            f"a literal ${{{names[0]}}}, or ${{{names[0]}:-default}} for a default)")


def _substitute(node: Any, variables: Mapping[str, Any] | None, budget: Budget, path: str) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = _substitute(value, variables, budget, _at(path, key))
        return node
    if isinstance(node, list):
        for i, item in enumerate(node):
            node[i] = _substitute(item, variables, budget, f"{path}[{i}]")
        return node
    if not isinstance(node, str) or variables is None or "${" not in node:
        return str(node) if isinstance(node, Quoted) else node
    whole = _VARIABLE.fullmatch(node)
    if whole and not whole.group(1) and not isinstance(node, Quoted):
        value = _value(whole, variables, typed=True)
        _grow(budget, len(node), len(value) if isinstance(value, str) else 0, path)
        return str(value) if isinstance(value, str) else value
    length = len(node) + sum(len(_text(m, variables)) - len(m.group(0)) for m in _VARIABLE.finditer(node))
    _grow(budget, len(node), length, path)
    return _VARIABLE.sub(lambda m: _text(m, variables), node)


def _grow(budget: Budget, before: int, after: int, path: str) -> None:
    """Check a string's length after substitution, and spend its growth, before it is built."""
    if after > MAX_STRING_BYTES:
        raise OverlayError(path, f"would be {after} characters after substitution, more than the limit of "
                           f"{MAX_STRING_BYTES} for one value")
    try:
        budget.spend(max(after - before, 0))
    except Exhausted as exc:
        raise OverlayError(path, exc.reason) from None


def _text(match: re.Match[str], variables: Mapping[str, Any]) -> str:
    """What one `${VAR}` (or `$${VAR}`) inside a longer string becomes."""
    if match.group(1):  # $${VAR}: the literal ${VAR}
        return match.group(0)[1:]
    value = _value(match, variables, typed=False)
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _value(match: re.Match[str], variables: Mapping[str, Any], typed: bool) -> Any:
    """The variable's value; its default (typed: as YAML reads it written bare) when it is undefined, or with the
    colon (`:-`, `:=`) also when it is empty, as envsubst and POSIX shells do. `substitute` has made sure that a
    variable without a default is defined."""
    name, colon, default = match.group(2), match.group(3), match.group(4)
    value = variables.get(name)
    if default is not None and (name not in variables or (colon and value == "")):
        return plain(default) if typed else default
    return value


def written(patch: dict[str, Any] | list[Any], doc: Any) -> Iterator[tuple[str, int | None]]:
    """The fields of `doc` that `patch` (applied to it before) set, in the notation of validation errors
    (`spec.workerGroupSpecs[0].replicas`), each with the index of the JSON patch operation that set it."""
    if isinstance(patch, dict):
        yield from ((field, None) for field in _merged(patch, doc, ""))
        return
    for i, operation in enumerate(patch):
        if isinstance(operation, dict) and operation.get("op") in ("add", "replace", "copy", "move") \
                and _pointer(operation.get("path")):
            yield _field(operation["path"], doc), i


def _merged(patch: dict[str, Any], node: Any, path: str) -> Iterator[str]:
    for key, value in patch.items():
        field, child = _at(path, key), node.get(key) if isinstance(node, dict) else None
        if isinstance(value, dict) and isinstance(child, dict):
            yield from _merged(value, child, field)
        elif key in LIST_KEYS and isinstance(value, list) and isinstance(child, list):
            name_key = LIST_KEYS[key]
            at = {item[name_key]: i for i, item in enumerate(child)
                  if isinstance(item, dict) and isinstance(item.get(name_key), str)}
            for change in value:
                name = change.get(name_key) if isinstance(change, dict) else None
                if isinstance(name, str) and name in at:
                    yield from _merged(change, child[at[name]], f"{field}[{at[name]}]")
        else:
            yield field


def _field(pointer: str, doc: Any) -> str:
    """A JSON pointer into `doc` as a field path (`/spec/workerGroupSpecs/0` -> `spec.workerGroupSpecs[0]`)."""
    node, field = doc, ""
    for part in jsonpointer.JsonPointer(pointer).parts:
        if isinstance(node, list):
            index = len(node) - 1 if part == "-" else int(part) if part.isdecimal() else -1
            field, node = f"{field}[{index}]", node[index] if 0 <= index < len(node) else None
        else:
            field, node = _at(field, part), node.get(part) if isinstance(node, dict) else None
    return field
