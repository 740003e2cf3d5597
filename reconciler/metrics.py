"""Every Prometheus metric of ray-gitops, defined once (prefix `ray_gitops_`).

The daemon owns one `Metrics` per process; tests pass a fresh `CollectorRegistry`. Label values
are bounded (environment, kind, object and group names, fixed enums): never messages or errors.
Per-object gauges are replaced as a whole per environment, so deleted objects leave no series.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .model import Health, SyncStatus

Labels = TypeVar("Labels", bound=tuple[str, ...])  # a gauge's label values after the environment, of a fixed count

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_LATENCY = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
_JOB = (1, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200, 21600)


class EnvironmentGauge(Collector):
    """A gauge whose series are set as a whole per environment (`replace`) and dropped with it (`forget`), held
    as plain values and turned into a family only when scraped: a prometheus_client child costs about 750 bytes
    a series, and a thousand environments hold tens of thousands of series (workers per group and state, job and
    Serve statuses)."""

    _type = "gauge"  # as prometheus_client's metrics say theirs (what lists of the exported metrics read)

    def __init__(self, name: str, documentation: str, labelnames: list[str], namespace: str,
                 registry: CollectorRegistry) -> None:
        self._name = f"{namespace}_{name}"
        self._documentation = documentation
        self._labelnames = tuple(labelnames)  # the environment first
        self._values: dict[str, dict[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def replace(self, environment: str, values: Mapping[Labels, float]) -> None:
        """The environment's series are exactly `values` (labels after the environment) from now on."""
        series = {tuple(str(label) for label in labels): float(value) for labels, value in values.items()}
        with self._lock:
            if series:
                self._values[environment] = series
            else:
                self._values.pop(environment, None)

    def forget(self, environment: str) -> None:
        with self._lock:
            self._values.pop(environment, None)

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            samples = [([environment, *labels], value) for environment, series in self._values.items()
                       for labels, value in series.items()]
        for labels, value in samples:
            family.add_metric(labels, value)
        return [family]


class Metrics:
    """The metric families, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, process: bool = False) -> None:
        """`process`: also export the standard `process_*`, `python_gc_*` and `python_info` series."""
        self.registry = registry
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        ns = "ray_gitops"
        self.environment_info = EnvironmentGauge(
            "environment_info", "1 per environment, with its sync and health status",
            ["environment", "target", "revision", "sync_status", "health_status"], namespace=ns, registry=registry)
        self.reconcile_total = Counter("reconcile_total", "Reconciles by result (success/noop/error)",
                                       ["environment", "result"], namespace=ns, registry=registry)
        self.reconcile_skipped = Counter("reconcile_skipped_total", "Interval reconciles a quiet environment skipped "
                                         "(watched, Synced and Healthy: its watch saw nothing move)", ["environment"],
                                         namespace=ns, registry=registry)
        self.reconcile_duration = Histogram("reconcile_duration_seconds", "Wall time of one reconcile",
                                            ["environment"], namespace=ns, registry=registry, buckets=_SECONDS)
        self.commit_to_applied = Histogram("commit_to_applied_seconds", "Commit time to the end of its apply",
                                           ["environment"], namespace=ns, registry=registry, buckets=_LATENCY)
        self.git_requests = Counter("git_requests_total", "Git requests by type and result",
                                    ["request_type", "result"], namespace=ns, registry=registry)
        self.git_last_fetch_success = Gauge("git_last_fetch_success_timestamp_seconds", "Unix time of the last "
                                            "successful Git fetch", namespace=ns, registry=registry)
        self.git_verification_failures = Counter("git_verification_failures", "Fetched heads refused because a "
                                                 "commit signature did not verify", namespace=ns, registry=registry)
        self.git_duration = Histogram("git_request_duration_seconds", "Wall time of Git requests",
                                      ["request_type", "result"], namespace=ns, registry=registry, buckets=_SECONDS)
        self.apply_total = Counter("apply_total", "Changes made to targets by kind and action",
                                   ["environment", "kind", "action"], namespace=ns, registry=registry)
        self.drift_corrections = Counter("drift_corrections_total", "Drifted objects set back to Git (hand edits, "
                                         "another applier, a deleted object)", ["environment", "kind"], namespace=ns,
                                         registry=registry)
        self.drifted_objects = EnvironmentGauge(
            "drifted_objects", "Objects whose live state differs from the applied revision", ["environment", "kind"],
            namespace=ns, registry=registry)
        self.raycluster_workers = EnvironmentGauge(
            "raycluster_workers", "Workers per group: desired/min/max/ready/available",
            ["environment", "cluster", "group", "state"], namespace=ns, registry=registry)
        self.raycluster_state = EnvironmentGauge("raycluster_state", "1 for the cluster's current state",
                                                 ["environment", "cluster", "state"], namespace=ns, registry=registry)
        self.rayjob_status = EnvironmentGauge("rayjob_status", "1 for the job's current run status",
                                              ["environment", "job", "status"], namespace=ns, registry=registry)
        self.rayservice_application_status = EnvironmentGauge(
            "rayservice_application_status", "1 for the current Ray Serve status of each application of a "
            "RayService (on its active cluster)", ["environment", "service", "application", "status"],
            namespace=ns, registry=registry)
        self.rayjob_runs = Counter("rayjob_runs_total", "Finished RayJob runs by result",
                                   ["environment", "job", "result"], namespace=ns, registry=registry)
        self.rayjob_duration = Histogram("rayjob_duration_seconds", "Duration of finished RayJob runs",
                                         ["environment", "job"], namespace=ns, registry=registry, buckets=_JOB)
        self.promotion_waiting = EnvironmentGauge(
            "promotion_waiting", "1 while an environment waits for a dependency to be Healthy at the revision it would "
            "apply", ["environment", "dependency"], namespace=ns, registry=registry)
        self.reconcile_stuck = Gauge("reconcile_stuck", "1 while an environment's reconcile has been running for more "
                                     "than 10 minutes (its environment alone is stuck)", ["environment"],
                                     namespace=ns, registry=registry)
        self.removals_refused = Gauge("removals_refused", "Environments gone from Git whose removal the guard "
                                      "refused (0 once a revision resolves it)", namespace=ns, registry=registry)
        self.kube_requests = Counter("kube_requests_total", "Kubernetes API requests by verb",
                                     ["verb"], namespace=ns, registry=registry)
        self.apply_conflicts = Counter("apply_conflicts_total", "Applies refused because another field manager "
                                       "owns a field", ["environment", "kind"], namespace=ns, registry=registry)
        self.leader = Gauge("leader", "1 while this replica holds the leader election Lease", ["identity"],
                            namespace=ns, registry=registry)
        self.shard_owned = Gauge("shard_owned", "1 while this replica holds the shard's Lease and reconciles its "
                                 "environments (with `shards`)", ["identity", "shard"], namespace=ns, registry=registry)
        self.shard_members = Gauge("shard_members", "Replicas sharing the environments, as counted from their member "
                                   "Leases (with `shards`)", namespace=ns, registry=registry)
        self.environments_owned = Gauge("environments_owned", "Environments in the shards this replica holds (with "
                                        "`shards`)", ["identity"], namespace=ns, registry=registry)
        self.webhook_requests = Counter("webhook_requests_total", "POST /hooks/git requests by provider and result "
                                        "(accepted/ping/unauthorized/too_large/bad_request)", ["provider", "result"],
                                        namespace=ns, registry=registry)
        self.notifications = Counter("notifications_total", "Notifications of environment state changes by result "
                                     "(sent/failed after retries/dropped: queue full)", ["result"], namespace=ns,
                                     registry=registry)

    def git_request(self, request_type: str, result: str, seconds: float) -> None:
        if request_type == "verify":  # a head that failed signature verification (counted once per head)
            self.git_verification_failures.inc()
            return
        self.git_requests.labels(request_type, result).inc()
        self.git_duration.labels(request_type, result).observe(seconds)
        if request_type == "fetch" and result == "success":
            self.git_last_fetch_success.set_to_current_time()

    def replace(self, gauge: EnvironmentGauge, environment: str, values: Mapping[Labels, float]) -> None:
        """Set `gauge` for `environment` to exactly `values` (labels after the environment)."""
        gauge.replace(environment, values)

    def forget(self, environment: str) -> None:
        """Remove every series of `environment` (it left Git): gauges, counters and histograms alike."""
        for family in self.__dict__.values():
            if isinstance(family, EnvironmentGauge):
                family.forget(environment)
                continue
            labels = getattr(family, "_labelnames", ())
            if "environment" not in labels:
                continue
            index = labels.index("environment")
            for values in [v for v in list(family._metrics) if v[index] == environment]:  # the family's series
                family.remove(*values)

    def environment_status(self, environment: str, target: str, revision: str, sync: SyncStatus,
                           health: Health) -> None:
        self.replace(self.environment_info, environment, {(target, revision, sync, health): 1})
