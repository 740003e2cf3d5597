"""The target registry: each target kind with its typed options, the object kinds it applies, its own
checks of an object, and a factory; and `Registry`, which the service and the commands hand to the pipeline.

A target's implementation is imported only when the first environment needs it (the local target's
runtime needs `ray[default]`, the Kubernetes target the `kubernetes` client). Instances are shared
by every environment on the same connection (`options.connection()`) and closed together.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..metrics import Metrics
from ..model import EnvironmentSpec, TargetOptions
from ..pipeline.target import Target
from ..pipeline.validate import Checker
from .kubernetes.options import KINDS as KUBERNETES_KINDS, KubernetesOptions
from .local.options import KINDS as LOCAL_KINDS, LocalOptions, check_object as local_check


@dataclass(frozen=True)
class Runtime:
    """What targets are built with, from the daemon's settings."""

    state_dir: Path
    metrics: Metrics
    kube_api_qps: float = 50.0
    kube_api_burst: int = 300
    default_service_account: str = ""  # Kubernetes: impersonated by environments that name none
    changed: Callable[[str], None] | None = None  # told the environment of an object someone else changed


@dataclass(frozen=True)
class TargetType:
    """One kind of target."""

    name: str
    options: Callable[[Mapping[str, Any], Checker, str], TargetOptions | None]  # (raw, checker, path)
    kinds: frozenset[str]
    build: Callable[[Any, Runtime], Target]  # (its options, runtime)
    # (object, checker, environment): what the target refuses beyond the common checks (local: caps, auth)
    check: Callable[[Mapping[str, Any], Checker, EnvironmentSpec], None] | None = None


def _local(options: LocalOptions, runtime: Runtime) -> Target:
    from .local.target import LocalTarget
    return LocalTarget(runtime.state_dir)


def _kubernetes(options: KubernetesOptions, runtime: Runtime) -> Target:
    from ..kubeapi import RateLimiter
    from .kubernetes.target import KubernetesTarget
    return KubernetesTarget(options, runtime.metrics, limiter=RateLimiter(runtime.kube_api_qps, runtime.kube_api_burst),
                            default_service_account=runtime.default_service_account, on_change=runtime.changed)


TYPES: dict[str, TargetType] = {t.name: t for t in (
    TargetType("local", LocalOptions.parse, LOCAL_KINDS, _local, local_check),
    TargetType("kubernetes", KubernetesOptions.parse, KUBERNETES_KINDS, _kubernetes),
)}


class Registry:
    """Target kinds and live instances (one per kind and connection); thread-safe. `types` replaces the
    built-in kinds (tests use an in-memory target)."""

    def __init__(self, runtime: Runtime, types: Mapping[str, TargetType] = TYPES) -> None:
        self.runtime, self._types = runtime, dict(types)
        self._targets: dict[tuple[Any, ...], Target] = {}
        self._lock = threading.Lock()

    def names(self) -> tuple[str, ...]:
        return tuple(self._types)

    def options(self, kind: str, raw: Mapping[str, Any], check: Checker, path: str) -> TargetOptions | None:
        return self._types[kind].options(raw, check, path)

    def kinds(self, kind: str) -> frozenset[str]:
        return self._types[kind].kinds

    def check(self, kind: str, doc: Mapping[str, Any], check: Checker, environment: EnvironmentSpec) -> None:
        """The target kind's own checks of an object that passed the common ones; errors go to `check`."""
        if (target_check := self._types[kind].check) is not None:
            target_check(doc, check, environment)

    def get(self, spec: EnvironmentSpec) -> Target:
        key = (spec.target.kind, *spec.target.options.connection())
        with self._lock:
            if key not in self._targets:
                self._targets[key] = self._types[spec.target.kind].build(spec.target.options, self.runtime)
            return self._targets[key]

    def close(self, workloads: bool = True) -> None:
        with self._lock:
            targets, self._targets = list(self._targets.values()), {}
        for target in targets:
            target.close(workloads)
