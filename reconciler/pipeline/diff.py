"""Diff stage: normalize desired and live objects, drop what Git does not own, compare.

Field-level comparison is deepdiff's (over lists keyed by name); people get a unified YAML diff.

Called by the planner. Pure functions: no target access; the one piece of state is the key of Secret
digests, set once at start-up (`use_digest_key`). The Ray-aware rules (the fields the autoscaler owns)
are `kuberay`'s; the planner passes them in as pointers to drop.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from ..kuberay import KINDS
from ..model import APPLIED_ANNOTATION, MANAGED_BY_VALUE, REVISION_ANNOTATION, Manifest

NOISY_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "finalizers",
                  "ownerReferences", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
IGNORED_ANNOTATIONS = (REVISION_ANNOTATION, APPLIED_ANNOTATION, "kubectl.kubernetes.io/last-applied-configuration")


def remove_pointer(doc: Any, pointer: str) -> None:
    """Delete the field(s) a JSON pointer names, in place; `*` matches every key or index."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]

    def walk(node: Any, rest: list[str]) -> None:
        head, tail = rest[0], rest[1:]
        children: list[Any]
        if isinstance(node, dict):
            keys = list(node) if head == "*" else [head] if head in node else []
            if not tail:
                for key in keys:
                    del node[key]
                return
            children = [node[k] for k in keys]
        elif isinstance(node, list):
            indexes = (range(len(node)) if head == "*"
                       else [int(head)] if head.isdecimal() and int(head) < len(node) else [])
            if not tail:
                for i in sorted(indexes, reverse=True):
                    del node[i]
                return
            children = [node[i] for i in indexes]
        else:
            return
        for child in children:
            walk(child, tail)

    if parts and parts != [""]:
        walk(doc, parts)


def strip(manifest: Manifest, pointers: Iterable[str]) -> Manifest:
    """A deep copy of `manifest` without the fields `pointers` name."""
    out = copy.deepcopy(manifest)
    for pointer in pointers:
        remove_pointer(out, pointer)
    return out


_DIGEST = re.compile(r"hmac-sha256:[0-9a-f]{12}")
_digest_key = secrets.token_bytes(32)  # this process's own until `use_digest_key` sets the installation's


def use_digest_key(key: bytes) -> None:
    """Key every digest of this process with `key` (the installation's, from the state dir). Called once at
    start-up, before any thread digests (`service.config.key_digests`: by `run`, and by `plan`, `diff` and
    `render` to match the daemon)."""
    global _digest_key
    _digest_key = key


def digest(value: Any) -> str:
    """How a Secret value is shown and stored: `hmac-sha256:` and the first 12 hex digits of its HMAC-SHA256
    under the installation's key, so a change is visible and the value is not, and a weak value cannot be
    guessed offline from its digest. A pure function of (key, value), so plans and drift stay stable; and
    idempotent: a digest stays itself."""
    text = str(value)
    return text if _DIGEST.fullmatch(text) else \
        "hmac-sha256:" + hmac.new(_digest_key, text.encode(), hashlib.sha256).hexdigest()[:12]


def hide_secret_values(manifest: Manifest) -> Manifest:
    """A Secret with every `data` and `stringData` value replaced by its digest (other kinds: as they are)."""
    if manifest.get("kind") != "Secret":
        return manifest
    out = dict(manifest)
    for key in KINDS["Secret"].string_maps:
        if isinstance(manifest.get(key), dict):
            out[key] = {k: digest(v) for k, v in manifest[key].items()}
    return out


def normalize(manifest: Manifest, ignore: Iterable[str] = ()) -> Manifest:
    """What Git owns of an object: no status, no server metadata, no ignored fields, no Secret values
    (their digests: every plan, diff and drift report sees only those)."""
    out = strip(hide_secret_values(manifest), ["/status", *(f"/metadata/{k}" for k in NOISY_METADATA), *ignore])
    meta = out.get("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in IGNORED_ANNOTATIONS}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return out


def _key(item: Any) -> str | None:
    if isinstance(item, dict):
        for name in ("groupName", "name"):
            if isinstance(key := item.get(name), str):
                return key
    return None


def keyed(node: Any) -> Any:
    """`node` with each list of uniquely named items (worker groups by `groupName`, containers, env
    and volumes by `name`) turned into a mapping `{"[name]": item}`, so items compare by name."""
    if isinstance(node, dict):
        return {key: keyed(value) for key, value in node.items()}
    if isinstance(node, list):
        keys = [_key(item) for item in node]
        if node and None not in keys and len(set(keys)) == len(keys):
            return {f"[{key}]": keyed(item) for key, item in zip(keys, node, strict=True)}
        return [keyed(item) for item in node]
    return node


def _dotted(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("[") and part.endswith("]"):
            out += part
        else:
            out += f".{part}" if out else str(part)
    return out


def changed_paths(old: Any, new: Any) -> list[str]:
    """Dotted paths where `old` and `new` differ (computed with deepdiff): named list items are matched
    by name (`spec.workerGroupSpecs[cpu].replicas`), other lists by index when their lengths agree and as
    a whole when they do not."""
    if old == new:
        return []
    from deepdiff import DeepDiff  # here, not at the top: it loads numpy and pydantic (0.15 s), and a first sync
    # (every object created) never compares two versions
    found: set[str] = set()
    for report, nodes in DeepDiff(keyed(old), keyed(new), view="tree", verbose_level=2).items():
        for node in nodes:
            parts = node.path(output_format="list")
            if report in ("iterable_item_added", "iterable_item_removed"):
                parts = parts[:-1]  # a list whose length changed: the list itself
            found.add(_dotted(parts))
    return sorted(found)


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def unified(old: Manifest | None, new: Manifest | None, name: str) -> str:
    """A readable unified YAML diff from live (`old`) to Git (`new`)."""
    def lines(doc: Manifest | None) -> list[str]:
        if not doc:
            return []
        return yaml.dump(doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False).splitlines(keepends=True)
    return "".join(difflib.unified_diff(lines(old), lines(new), f"live/{name}", f"git/{name}"))


def lazy(old: Manifest | None, new: Manifest | None, name: str) -> Callable[[], str]:
    """`unified` of already normalized documents (`new` as rendered for a create), computed when called."""
    return lambda: unified(old, new if old is not None else normalize(new or {}), name)


def _segments(path: str) -> list[str]:
    """`spec.workerGroupSpecs[cpu].replicas` -> ["spec", "workerGroupSpecs", "[cpu]", "replicas"]."""
    return [part for part in re.split(r"\.|(\[[^]]*\])", path) if part]


def _owns(node: Any, rest: list[str]) -> bool:
    """A `managedFields` fieldsV1 tree owns the field at `rest` (or all of it: an atomic field is a leaf `{}`)."""
    if not isinstance(node, dict) or not node or not rest:
        return isinstance(node, dict)
    head = rest[0]
    if head.startswith("["):  # a list item by name (`k:{"groupName":"cpu"}`) or index (`i:0`)
        name = head[1:-1]
        return any(_owns(child, rest[1:]) for key, child in node.items()
                   if key.startswith(("k:", "v:", "i:")) and (f'"{name}"' in key or key == f"i:{name}"))
    for end in range(len(rest), 0, -1):  # a key may hold dots itself (`metadata.labels.app.kubernetes.io/name`)
        key = "f:" + ".".join(rest[:end])
        if key in node:
            return _owns(node[key], rest[end:])
    return False


def changed_by(manifest: Manifest, paths: Iterable[str], ours: str = MANAGED_BY_VALUE) -> list[str]:
    """The field managers other than `ours` that own one of `paths` (as `changed_paths` names them) in a live
    object's `metadata.managedFields` (Kubernetes; none elsewhere), newest first: who made a drift."""
    entries = sorted((manifest.get("metadata") or {}).get("managedFields") or [], key=lambda e: e.get("time") or "",
                     reverse=True)
    found: list[str] = []
    for entry in entries:
        manager = str(entry.get("manager") or "")
        if manager in found or manager == ours or entry.get("subresource"):
            continue
        if any(_owns(entry.get("fieldsV1") or {}, _segments(path)) for path in paths):
            found.append(manager)
    return found
