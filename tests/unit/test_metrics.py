"""The per-environment gauges (`EnvironmentGauge`): set as a whole per environment, dropped with it, and served
in the text format Prometheus parses, with the same names and labels as any gauge."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.metrics import Metrics
from reconciler.model import Health, SyncStatus


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of family `name` as Prometheus parses the /metrics text."""
    text = generate_latest(metrics.registry).decode()
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            if family.name == name for s in family.samples}


def test_replace_sets_exactly_the_given_series_and_leaves_none_of_the_last() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.replace(metrics.raycluster_state, "a", {("demo", "ready"): 1.0, ("demo", "provisioning"): 0.0})
    metrics.replace(metrics.raycluster_state, "b", {("other", "ready"): 1.0})
    metrics.replace(metrics.raycluster_state, "a", {("renamed", "ready"): 1.0})  # `demo` left Git

    assert samples(metrics, "ray_gitops_raycluster_state") == {
        (("cluster", "renamed"), ("environment", "a"), ("state", "ready")): 1.0,
        (("cluster", "other"), ("environment", "b"), ("state", "ready")): 1.0}
    metrics.replace(metrics.raycluster_state, "a", {})
    assert [labels for labels in samples(metrics, "ray_gitops_raycluster_state")] == [
        (("cluster", "other"), ("environment", "b"), ("state", "ready"))]


def test_label_values_are_the_enums_values_and_the_registry_reads_them() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.environment_status("a", "kubernetes", "0123456789ab", SyncStatus.SYNCED, Health.HEALTHY)

    assert metrics.registry.get_sample_value("ray_gitops_environment_info", {
        "environment": "a", "target": "kubernetes", "revision": "0123456789ab", "sync_status": "Synced",
        "health_status": "Healthy"}) == 1.0


def test_forget_drops_every_series_of_the_environment_alone() -> None:
    metrics = Metrics(CollectorRegistry())
    for env in ("a", "b"):
        metrics.environment_status(env, "local", "", SyncStatus.SYNCED, Health.HEALTHY)
        metrics.replace(metrics.rayjob_status, env, {("count", "SUCCEEDED"): 1.0})
        metrics.reconcile_total.labels(env, "success").inc()

    metrics.forget("a")

    for name in ("ray_gitops_environment_info", "ray_gitops_rayjob_status", "ray_gitops_reconcile"):
        assert {dict(labels)["environment"] for labels in samples(metrics, name)} == {"b"}, name
