"""The one YAML parser for Git content: bytes -> JSON-typed documents, within bounds, or precise errors.

Used by `render` for every file and by `validate` for a RayJob's `runtimeEnvYAML`, so whatever
`validate` accepts, `plan`, `diff` and the daemon handle the same way. Git content is untrusted:
- only JSON types come out: strings, numbers (finite), booleans, null, lists, maps with string keys.
  An unquoted date stays the string it looks like (as Kubernetes reads it); `!!binary`, `!!set`,
  `!!omap`, custom tags, non-string keys, `.inf` and `.nan` are errors naming the field;
- a key twice in one mapping is an error (YAML parsers usually let the last one win, silently);
- anchors and aliases are allowed (`<<` merges too), but what they expand to is counted: a file
  expands to at most `MAX_VALUES` values, so an alias bomb is refused before anything copies it;
- nesting deeper than `MAX_DEPTH` is refused (a cyclic alias is refused the same way).
The text is parsed by libyaml (PyYAML's C parser, which itself stops at 1000 levels) into nodes;
the Python values are built here, from those nodes, with the path of each field at hand for errors.
"""
from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ValidationError

MAX_DEPTH = 64  # nested lists and maps in one document
MAX_VALUES = 200_000  # values one file expands to, aliases counted each time they are used
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:null", "tag:yaml.org,2002:timestamp"}
_MERGE = "tag:yaml.org,2002:merge"
_TAG_NAMES = {"tag:yaml.org,2002:binary": "!!binary", "tag:yaml.org,2002:set": "!!set",
              "tag:yaml.org,2002:omap": "!!omap", "tag:yaml.org,2002:pairs": "!!pairs"}


class _Refused(Exception):
    """A value that is not allowed; `path` is the field, `line` where it starts."""

    def __init__(self, path: str, reason: str, node: Node) -> None:
        super().__init__(reason)
        self.path, self.reason, self.line = path, reason, node.start_mark.line + 1


class _Builder:
    """Python values from nodes, counting what aliases expand to."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.values = loader, 0

    def build(self, node: Node, path: str, depth: int) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise _Refused(path, f"expands to more than {MAX_VALUES} values (aliases count each time they are "
                           "used)", node)
        if depth > MAX_DEPTH:
            raise _Refused(path, f"nested deeper than {MAX_DEPTH} levels (or an alias refers to itself)", node)
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, SequenceNode) and node.tag == "tag:yaml.org,2002:seq":
            return [self.build(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, MappingNode) and node.tag == "tag:yaml.org,2002:map":
            return self._mapping(node, path, depth)
        raise _Refused(path, f"{_TAG_NAMES.get(node.tag, node.tag)} is not allowed: only strings, numbers, "
                       "booleans, null, lists and maps", node)

    def _scalar(self, node: ScalarNode, path: str) -> Any:
        if node.tag not in _SCALARS:
            raise _Refused(path, f"{_TAG_NAMES.get(node.tag, node.tag)} is not allowed: only strings, numbers, "
                           "booleans, null, lists and maps", node)
        if node.tag == "tag:yaml.org,2002:timestamp":  # an unquoted date: the text, as Kubernetes reads it
            return node.value
        value = self.loader.construct_object(node)
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused(path, f"{node.value} is not a JSON number", node)
        return value

    def _mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in reversed(sources):  # the first listed wins, as YAML's merge key says
                    value = self.build(source, path, depth + 1)
                    if not isinstance(value, dict):
                        raise _Refused(path, "<< merges only maps", source)
                    merged.update(value)
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a list or map"
                raise _Refused(path, f"key {shown!r} is not a string (quote it)", key_node)
            key = key_node.value
            field = f"{path}.{key}" if path else key
            if key in out:
                raise _Refused(field, "duplicate key (a second value would silently replace the first)", key_node)
            out[key] = self.build(value_node, field, depth + 1)
        return {**merged, **out}


def documents(data: bytes | str, file: str) -> tuple[list[Any], list[ValidationError]]:
    """Every document of a YAML file as JSON-typed values (None for an empty one), or the errors."""
    loader = _Loader(data)
    docs: list[Any] = []
    builder = _Builder(loader)
    try:
        while loader.check_node():
            node = loader.get_node()
            docs.append(builder.build(node, "", 0))
    except _Refused as exc:
        return [], [ValidationError(file, f"{exc.reason} (line {exc.line})", len(docs), "", exc.path)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return [], [ValidationError(file, f"invalid YAML{where}: {problem}")]
    finally:
        loader.dispose()
    return docs, []


def text(value: str, file: str, document: int | None, obj: str, field: str) -> tuple[Any, list[ValidationError]]:
    """One YAML document held in a string field (a RayJob's `runtimeEnvYAML`), parsed the same way."""
    docs, errors = documents(value, file)
    if errors:
        return None, [ValidationError(file, e.reason, document, obj, f"{field}.{e.path}" if e.path else field)
                      for e in errors]
    if len(docs) > 1:
        return None, [ValidationError(file, "must hold one YAML document", document, obj, field)]
    return (docs[0] if docs else None), []
