"""The target registry: each target kind with its typed options, the object kinds it applies, its own
checks of an object, what the daemon's settings admit (Kubernetes: its clusters), and a factory; and
`Registry`, which the service and the commands hand to the pipeline.

A target's implementation is imported only when the first environment needs it (the local target's
runtime needs `ray[default]`, the Kubernetes target the `kubernetes` client). Instances are shared
by every environment on the same connection (`options.connection()`) and closed together.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic

from .. import kuberay
from ..errors import RayGitopsError, TemporaryError
from ..metrics import Metrics
from ..model import EnvironmentSpec, TargetOptions, TargetSpec
from ..pipeline.target import Checker, OptionsT, Target
from .kubernetes.options import (
    DEFAULT_CLUSTER as DEFAULT_CLUSTER,
    PROTECTED_NAMESPACES,
    Cluster,
    KubernetesOptions,
    admit,
)
from .local.options import LocalOptions, check_object as local_check

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 30.0  # seconds a target may take to connect before its environments fail (and retry)


@dataclass(frozen=True)
class Runtime:
    """What targets are built with, from the daemon's settings."""

    state_dir: Path
    metrics: Metrics
    kube_api_qps: float = 0.0
    kube_api_burst: int = 300
    default_service_account: str = ""  # Kubernetes: impersonated by environments that name none
    changed: Callable[[str], None] | None = None  # told the environment of an object someone else changed
    clusters: Mapping[str, Cluster] | None = None  # Kubernetes clusters by name (None: not known, as in `validate`)
    protected: frozenset[str] = PROTECTED_NAMESPACES  # namespaces a cluster's settings must list by name
    connect_timeout: float = CONNECT_TIMEOUT  # seconds a target may take to connect (read its credentials)
    ledger_key: bytes = b""  # signs the target's ledger copies (Kubernetes: ConfigMaps tenants could write)


@dataclass(frozen=True)
class TargetType(Generic[OptionsT]):
    """One kind of target: its options parser, and the rest typed by what that parser returns."""

    name: str
    options: Callable[[Mapping[str, Any], Checker, str], OptionsT | None]  # (raw, checker, path)
    kinds: frozenset[str]
    build: Callable[[OptionsT, Runtime], Target[OptionsT]]  # (its options, runtime)
    # (object, checker, environment): what the target refuses beyond the common checks (local: caps, auth)
    check: Callable[[Mapping[str, Any], Checker, EnvironmentSpec], None] | None = None
    # (options, environment, runtime, checker, path): what the daemon's settings refuse (Kubernetes: clusters)
    admit: Callable[[OptionsT, str, Runtime, Checker, str], None] | None = None


def _local(options: LocalOptions, runtime: Runtime) -> Target[LocalOptions]:
    from .local.target import LocalTarget
    return LocalTarget(runtime.state_dir)


def _kubernetes(options: KubernetesOptions, runtime: Runtime) -> Target[KubernetesOptions]:
    from ..kubeapi import RateLimiter, connect
    from .kubernetes.target import KubernetesTarget
    cluster = (runtime.clusters or {}).get(options.cluster) or Cluster(options.cluster)
    return KubernetesTarget(options, runtime.metrics, limiter=RateLimiter(runtime.kube_api_qps, runtime.kube_api_burst),
                            default_service_account=runtime.default_service_account, on_change=runtime.changed,
                            api_client=connect(cluster.kubeconfig, cluster.context, cluster.in_cluster),
                            owns_client=True, ledger_key=runtime.ledger_key)


def _admit_kubernetes(options: KubernetesOptions, environment: str, runtime: Runtime, check: Checker,
                      path: str) -> None:
    admit(options, environment, runtime.clusters, runtime.protected, check, path)


# Each kind typed by its own options; by name, any kind's (the registry meets each kind's options only with it).
TYPES: dict[str, TargetType[Any]] = {t.name: t for t in (
    TargetType[LocalOptions]("local", LocalOptions.parse, kuberay.NAMES, _local, local_check),
    TargetType[KubernetesOptions]("kubernetes", KubernetesOptions.parse, kuberay.NAMES, _kubernetes,
                                  admit=_admit_kubernetes),
)}


class Registry:
    """Target kinds and live instances (one per kind and connection); thread-safe. `types` replaces the
    built-in kinds (tests use an in-memory target)."""

    def __init__(self, runtime: Runtime, types: Mapping[str, TargetType[Any]] = TYPES) -> None:
        self.runtime, self._types = runtime, dict(types)
        self._targets: dict[tuple[Any, ...], Future[Target[Any]]] = {}
        self._lock = threading.Lock()  # around `_targets` only: a target is built outside it
        self._builder = ThreadPoolExecutor(max_workers=4, thread_name_prefix="connect")

    def names(self) -> tuple[str, ...]:
        return tuple(self._types)

    def options(self, kind: str, raw: Mapping[str, Any], check: Checker, path: str,
                environment: str) -> TargetOptions | None:
        """The target kind's options for `environment`, checked by the target and admitted by the daemon's settings."""
        target_type = self._types[kind]
        options = target_type.options(raw, check, path)
        if options is not None and target_type.admit is not None:
            target_type.admit(options, environment, self.runtime, check, path)
        return options

    def kinds(self, kind: str) -> frozenset[str]:
        return self._types[kind].kinds

    def check(self, kind: str, doc: Mapping[str, Any], check: Checker, environment: EnvironmentSpec) -> None:
        """The target kind's own checks of an object that passed the common ones; errors go to `check`."""
        if (target_check := self._types[kind].check) is not None:
            target_check(doc, check, environment)

    def get(self, spec: EnvironmentSpec) -> Target[Any]:
        """The target of `spec`'s connection, built once (connecting reads credentials). The build runs on a thread
        of its own and is waited for at most `connect_timeout` seconds, and never under a lock another environment
        needs: a connection that hangs fails its environments alone (TemporaryError), and is tried again."""
        key = (spec.target.kind, *spec.target.options.connection())
        with self._lock:
            building = self._targets.get(key)
            if building is None or (building.done() and building.exception() is not None):
                building = self._targets[key] = self._builder.submit(
                    self._types[spec.target.kind].build, spec.target.options, self.runtime)
        try:
            return building.result(timeout=self.runtime.connect_timeout)
        except FutureTimeout:
            raise TemporaryError(f"connecting to {spec.target.kind} {'/'.join(map(str, key[1:])) or 'target'} took "
                                 f"more than {self.runtime.connect_timeout:.0f} s; trying again later") from None

    def verified_heads(self) -> list[str]:
        """The verified branch heads the ledger copies on every configured Kubernetes cluster remember (for a
        daemon that lost its state dir: strict signatures then still refuse a rollback of history)."""
        found: list[str] = []
        for name in (self.runtime.clusters or {}):
            spec = EnvironmentSpec(f"cluster-{name}", TargetSpec("kubernetes", KubernetesOptions("default", name)))
            try:
                target = self.get(spec)
            except RayGitopsError as exc:
                log.warning("cluster %s: its ledger copies cannot be read (%s)", name, exc)
                continue
            found += getattr(target, "verified_heads", lambda: [])()
        return found

    def close(self, workloads: bool = True) -> None:
        """Close every target built (a build still running is left to finish on its own thread)."""
        with self._lock:
            built, self._targets = list(self._targets.values()), {}
        self._builder.shutdown(wait=False)
        for future in built:
            if future.done() and future.exception() is None:
                future.result().close(workloads)
