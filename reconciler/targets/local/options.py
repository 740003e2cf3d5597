"""`spec.target.local` of an environment: parsed and checked here, by the target itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ...pipeline.validate import Checker

KINDS = frozenset({"RayCluster", "RayJob", "RayCronJob", "ConfigMap", "Secret"})


@dataclass(frozen=True)
class LocalOptions:
    """The embedded local Ray runtime of this machine."""

    persist: bool = False  # keep the Ray processes running when the daemon stops
    namespace: str = "default"  # objects live in one namespace locally

    @property
    def namespaces(self) -> frozenset[str]:
        return frozenset({self.namespace})

    def connection(self) -> tuple[Any, ...]:
        return ()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], c: Checker, path: str) -> LocalOptions:
        c.known_keys(raw, path, {"persist"})
        c.boolean(raw.get("persist"), f"{path}.persist")
        return cls(persist=raw.get("persist") is True)
