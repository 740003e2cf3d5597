"""`spec.target.local` of an environment: parsed and checked here, by the target itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ...model import EnvironmentSpec
from ...pipeline.validate import Checker
from . import limits

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


def check_object(doc: Mapping[str, Any], c: Checker, environment: EnvironmentSpec) -> None:
    """What the local target refuses beyond the common checks: more Ray nodes than its caps (`limits`), and
    a cluster that asks to run without Ray's token authentication (every local cluster uses it)."""
    limits.check(doc, c, environment)
    for path, spec in limits.cluster_specs(doc):
        if (spec.get("authOptions") or {}).get("mode") == "disabled":
            c.fail(f"{path}.authOptions.mode", "disabled is refused by the local target: every local Ray cluster "
                   "uses token authentication (remove the field, or set token)")
