"""The one YAML parser for Git content: bytes -> JSON-typed documents, within bounds, or precise errors.

Used by `render` for every file and by `validate` for a RayJob's `runtimeEnvYAML`, so whatever
`validate` accepts, `plan`, `diff` and the daemon handle the same way. Git content is untrusted:
- only JSON types come out: strings, numbers (finite), booleans, null, lists, maps with string keys.
  An unquoted date stays the string it looks like (as Kubernetes reads it); `!!binary`, `!!set`,
  `!!omap`, custom tags, non-string keys, `.inf` and `.nan` are errors naming the field;
- a key twice in one mapping is an error (YAML parsers usually let the last one win, silently);
- anchors and aliases are allowed (`<<` merges too), but what they expand to is counted: a file
  expands to at most `MAX_VALUES` values, so an alias bomb is refused before anything copies it;
- nesting deeper than `MAX_DEPTH` is refused, and so is an alias inside its own anchor;
- a file holds at most `MAX_DOCUMENTS` documents, an empty one counted too;
- with a render `Budget`, every key and value is spent from it as it is built;
- a string written quoted (or tagged `!!str`) that looks like a whole `${VAR}` comes out as `Quoted`,
  so substitution keeps it a string (as Flux's, which substitutes the text before YAML reads it).
libyaml (PyYAML's C parser) turns the text into events, one at a time; the Python values are built here
from those events, with the path of each field at hand for errors, so counting stops a file at the limit
before the rest of it is even parsed (building PyYAML's node graph first would hold a whole document).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from ..errors import ValidationError
from .budgets import VALUE_BYTES, Budget, Exhausted

MAX_DEPTH = 64  # nested lists and maps in one document
MAX_VALUES = 200_000  # values one file expands to, aliases counted each time they are used
MAX_DOCUMENTS = 1_000  # documents in one file, empty ones included
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR, _SEQ, _MAP = "tag:yaml.org,2002:str", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"
_TIMESTAMP, _MERGE = "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge"
_SCALARS = {_STR, "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
            "tag:yaml.org,2002:null", _TIMESTAMP}
_TAG_NAMES = {"tag:yaml.org,2002:binary": "!!binary", "tag:yaml.org,2002:set": "!!set",
              "tag:yaml.org,2002:omap": "!!omap", "tag:yaml.org,2002:pairs": "!!pairs"}
_NOT_JSON = "is not allowed: only strings, numbers, booleans, null, lists and maps"
_TYPED = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}


class Quoted(str):
    """A string the YAML wrote quoted (or tagged `!!str`) that looks like a whole `${VAR}`: substitution
    keeps it a string, and makes it a plain `str` (the render's objects hold no `Quoted`)."""

    __slots__ = ()


class _Refused(Exception):
    """A value that is not allowed; `path` is the field, `line` where it starts."""

    def __init__(self, path: str, reason: str, mark: Any) -> None:  # a libyaml or PyYAML Mark
        super().__init__(reason)
        self.path, self.reason, self.line = path, reason, mark.line + 1


@dataclass(frozen=True)
class _Anchor:
    """What an anchor built, and what each alias to it counts again: values, bytes and levels below it."""

    value: Any
    values: int
    spent: int
    height: int


class _Builder:
    """Python values from parser events, counting values (aliases each time they are used) and spending
    them from the budget as they are built."""

    def __init__(self, loader: Any, budget: Budget | None) -> None:
        self.loader, self.budget = loader, budget
        self.values = self.spent = self.deepest = 0  # deepest: the deepest level reached by the value being built
        self.anchors: dict[str, _Anchor | None] = {}  # None: still being built

    def document(self) -> Any:
        self.anchors = {}  # anchors hold within one document
        self.loader.get_event()  # DocumentStartEvent
        value = self.build("", 0)
        self.loader.get_event()  # DocumentEndEvent
        return value

    def _count(self, values: int, spent: int, path: str, mark: Any) -> None:
        self.values += values
        self.spent += spent
        if self.values > MAX_VALUES:
            raise _Refused(path, f"expands to more than {MAX_VALUES} values (aliases count each time they are "
                           "used)", mark)
        if self.budget is not None:
            try:
                self.budget.spend(spent)
            except Exhausted as exc:
                raise _Refused(path, exc.reason, mark) from None

    def build(self, path: str, depth: int) -> Any:
        event = self.loader.get_event()
        if isinstance(event, AliasEvent):
            return self._alias(event, path, depth)
        if depth > MAX_DEPTH:
            raise _Refused(path, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor, values, spent, deepest = event.anchor, self.values, self.spent, self.deepest
        self.deepest = depth
        self._count(1, VALUE_BYTES + len(event.value if isinstance(event, ScalarEvent) else ""), path,
                    event.start_mark)
        if anchor is not None:
            if anchor in self.anchors:
                raise _Refused(path, f"anchor &{anchor} is defined twice", event.start_mark)
            self.anchors[anchor] = None
        value: Any
        if isinstance(event, ScalarEvent):
            value = self._scalar(event, path)
        elif isinstance(event, SequenceStartEvent) and event.tag in (None, "!", _SEQ):
            value = []
            while not self.loader.check_event(SequenceEndEvent):
                value.append(self.build(f"{path}[{len(value)}]", depth + 1))
            self.loader.get_event()
        elif isinstance(event, MappingStartEvent) and event.tag in (None, "!", _MAP):
            value = self._mapping(path, depth)
        else:
            raise _Refused(path, f"{_TAG_NAMES.get(event.tag, event.tag)} {_NOT_JSON}", event.start_mark)
        if anchor is not None:
            self.anchors[anchor] = _Anchor(value, self.values - values, self.spent - spent, self.deepest - depth)
        self.deepest = max(deepest, self.deepest)
        return value

    def _alias(self, event: AliasEvent, path: str, depth: int) -> Any:
        """A fresh copy of what the anchor built (so patching one place never changes another), counted again."""
        if event.anchor not in self.anchors:
            raise _Refused(path, f"alias *{event.anchor} has no anchor before it", event.start_mark)
        anchored = self.anchors[event.anchor]
        if anchored is None:
            raise _Refused(path, f"alias *{event.anchor} is inside its own anchor (it would never end)",
                           event.start_mark)
        if depth + anchored.height > MAX_DEPTH:
            raise _Refused(path, f"nested deeper than {MAX_DEPTH} levels (where alias *{event.anchor} is used)",
                           event.start_mark)
        self.deepest = max(self.deepest, depth + anchored.height)
        self._count(anchored.values, anchored.spent, path, event.start_mark)
        return copy.deepcopy(anchored.value)

    def _tag(self, event: ScalarEvent) -> str:
        """A scalar's tag, resolved from its text when it has none (a plain `1` is an int, `<<` a merge)."""
        tag = event.tag
        return self.loader.resolve(ScalarNode, event.value, event.implicit) if tag is None or tag == "!" else tag

    def _scalar(self, event: ScalarEvent, path: str) -> Any:
        tag = self._tag(event)
        if tag not in _SCALARS:
            raise _Refused(path, f"{_TAG_NAMES.get(tag, tag)} {_NOT_JSON}", event.start_mark)
        if tag in (_STR, _TIMESTAMP):  # an unquoted date: the text, as Kubernetes reads it
            written = not event.implicit[0] and event.value.startswith("${") and event.value.endswith("}")
            return Quoted(event.value) if written else event.value
        try:
            value = _construct(self.loader, tag, event.value)
        except ValueError:  # Python reads at most 4300 digits
            raise _Refused(path, f"a number of {len(event.value)} characters is too long", event.start_mark) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _Refused(path, f"{event.value} is not a JSON number", event.start_mark)
        return value

    def _mapping(self, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        keys = 0  # what the keys count, spent with the mapping's end
        while not self.loader.check_event(MappingEndEvent):
            key = self.loader.get_event()
            tag = self._tag(key) if isinstance(key, ScalarEvent) else ""
            if tag == _MERGE:
                value = self.build(path, depth + 1)
                for source in reversed(value if isinstance(value, list) else [value]):  # the first listed wins
                    if not isinstance(source, dict):
                        raise _Refused(path, "<< merges only maps", key.start_mark)
                    merged.update(source)
                continue
            if tag != _STR:
                shown = f"key {key.value!r}" if isinstance(key, ScalarEvent) else "a key that is a list, map or alias"
                raise _Refused(path, f"{shown} is not a string (quote it)", key.start_mark)
            field = f"{path}.{key.value}" if path else key.value
            if key.value in out:
                raise _Refused(field, "duplicate key (a second value would silently replace the first)",
                               key.start_mark)
            keys += VALUE_BYTES + len(key.value)
            out[key.value] = self.build(field, depth + 1)
        end = self.loader.get_event()
        self._count(0, keys, path, end.start_mark)
        return {**merged, **out}


def _construct(loader: Any, tag: str, text: str) -> Any:
    return loader.yaml_constructors[tag](loader, ScalarNode(tag, text))


def plain(text: str) -> Any:
    """What `text` reads as written unquoted in YAML, if that is a finite number or a boolean; else the text
    itself (so a default in a bare `${N:=3}` is the number 3, as it is with Flux)."""
    loader = _Loader("")
    try:
        tag = loader.resolve(ScalarNode, text, (True, False))
        value = _construct(loader, tag, text) if tag in _TYPED else text
    except ValueError:  # a number of more than 4300 digits
        return text
    finally:
        loader.dispose()
    return text if isinstance(value, float) and not math.isfinite(value) else value


def documents(data: bytes | str, file: str, budget: Budget | None = None,
              limit: int = MAX_DOCUMENTS) -> tuple[list[Any], list[ValidationError]]:
    """Every document of a YAML file as JSON-typed values (None for an empty one), or the errors. At most
    `limit` documents; with a `budget`, what is built is spent from it."""
    loader = _Loader(data)
    docs: list[Any] = []
    builder = _Builder(loader, budget)
    try:
        loader.get_event()  # StreamStartEvent
        while not loader.check_event(StreamEndEvent):
            if len(docs) == limit:
                return [], [ValidationError(file, f"more than {limit} YAML document(s) (an empty one counts too)",
                                            limit)]
            docs.append(builder.document())
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


def text(value: str, file: str, document: int | None, obj: str, field: str,
         budget: Budget | None = None) -> tuple[Any, list[ValidationError]]:
    """One YAML document held in a string field (a RayJob's `runtimeEnvYAML`), parsed the same way."""
    docs, errors = documents(value, file, budget, limit=1)
    if errors:
        return None, [ValidationError(file, e.reason, document, obj, f"{field}.{e.path}" if e.path else field)
                      for e in errors]
    return (docs[0] if docs else None), []
