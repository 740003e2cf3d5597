"""Tenants cannot reach past their environment: cluster access is the daemon's (clusters, namespaces and
service accounts it admits), a connection that hangs stalls nobody else, Git cannot hold ray-gitops' own
objects, local clusters of two environments never share a name, and Ray nodes get no daemon secret."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from reconciler.errors import InvalidEnvironment, TemporaryError
from reconciler.metrics import Metrics
from reconciler.pipeline.render import render
from reconciler.pipeline.source import DirectoryTree
from reconciler.service import settings
from reconciler.service.config import load
from reconciler.targets import TYPES, Cluster, Registry, Runtime, TargetType
from reconciler.targets.local.nodes import PRELOAD_DIR, node_environment
from reconciler.targets.local.observe import cluster_name

CLUSTERS = {"prod": Cluster("prod", environments=("team-*",), namespaces=("team-*", "kube-system"),
                            service_accounts=("ray-gitops-tenant",)),
            "default": Cluster("default")}


def environment(root: Path, name: str, target: str, objects: str = "") -> Path:
    env = root / "environments" / name
    env.mkdir(parents=True)
    (env / "environment.yaml").write_text(f"apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\nmetadata: "
                                          f"{{name: {name}}}\nspec: {{target: {{{target}}}}}\n")
    if objects:
        (env / "objects.yaml").write_text(objects)
    return root


def errors(root: Path, name: str, clusters: dict[str, Cluster] | None = CLUSTERS) -> str:
    registry = Registry(Runtime(Path("."), Metrics(CollectorRegistry()), clusters=clusters))
    try:
        render(DirectoryTree(root), name, "", registry)
    except InvalidEnvironment as exc:
        return "\n".join(str(e) for e in exc.errors)
    return ""


@pytest.mark.parametrize("name, target, message", [
    pytest.param("team-a", "kubernetes: {cluster: prod, namespace: team-a, serviceAccountName: ray-gitops-tenant}",
                 "", id="admitted"),
    pytest.param("team-a", "kubernetes: {cluster: staging, namespace: team-a}",
                 "spec.target.kubernetes.cluster: no cluster staging in the daemon's settings (known: default, prod)",
                 id="unknown-cluster"),
    pytest.param("ops", "kubernetes: {cluster: prod, namespace: team-a}",
                 "environment ops may not use cluster prod (the daemon allows team-*)", id="environment-not-allowed"),
    pytest.param("team-a", "kubernetes: {cluster: prod, namespace: ray-x}",
                 "namespace ray-x is not allowed on cluster prod (allowed: team-*, kube-system)", id="namespace"),
    pytest.param("team-a", "kubernetes: {namespace: kube-system}",
                 "namespace kube-system is protected (kube-node-lease, kube-public, kube-system): "
                 "the daemon's settings must list it by name for cluster default", id="protected"),
    pytest.param("team-a", "kubernetes: {cluster: prod, namespace: kube-system}", "", id="protected-but-listed"),
    pytest.param("team-a", "kubernetes: {cluster: prod, namespace: team-a, serviceAccountName: cluster-admin}",
                 "service account cluster-admin is not allowed on cluster prod (allowed: ray-gitops-tenant)",
                 id="service-account"),
    pytest.param("team-a", "kubernetes: {cluster: prod, namespace: team-a, namespaces: [~]}",
                 "spec.target.kubernetes.namespaces[0]: must be a DNS-1123 label (a-z, 0-9, '-'), got None",
                 id="empty-namespace"),
])
def test_the_daemons_clusters_decide_who_may_use_which_namespace_and_account(tmp_path: Path, name: str, target: str,
                                                                           message: str) -> None:
    found = errors(environment(tmp_path, name, target), name)
    assert (message in found) if message else found == ""


def test_the_daemons_own_namespace_is_protected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "serviceaccount-namespace"
    own.write_text("ray-gitops\n")
    monkeypatch.setattr(settings, "SERVICE_ACCOUNT_NAMESPACE", str(own))
    runtime = load({"state_dir": str(tmp_path / "state")}, {}).runtime(Metrics(CollectorRegistry()))
    root = environment(tmp_path, "team-a", "kubernetes: {namespace: ray-gitops}")
    with pytest.raises(InvalidEnvironment) as refused:
        render(DirectoryTree(root), "team-a", "", Registry(runtime))
    assert "namespace ray-gitops is protected (kube-node-lease, kube-public, kube-system, ray-gitops)" in "\n".join(
        str(e) for e in refused.value.errors)


def test_without_the_daemons_settings_validate_checks_no_cluster_name(tmp_path: Path) -> None:
    root = environment(tmp_path, "team-a", "kubernetes: {cluster: anything, namespace: team-a}")
    assert errors(root, "team-a", clusters=None) == ""


def test_clusters_come_from_the_config_file_and_the_default_one_from_the_kubeconfig_flags(tmp_path: Path) -> None:
    config = tmp_path / "ray-gitops.yaml"
    config.write_text("clusters:\n  prod: {kubeconfig: /etc/ray-gitops/prod.yaml, context: prod, "
                      "environments: [team-*], namespaces: [team-*]}\n  local: {in-cluster: true}\n")
    settings = load({}, {}, config)
    assert settings.kube_clusters() == {
        "prod": Cluster("prod", "/etc/ray-gitops/prod.yaml", "prod", False, ("team-*",), ("team-*",), ("*",)),
        "local": Cluster("local", in_cluster=True)}
    assert load({"kubeconfig": "/k", "kube_context": "c", "default_service_account": "ray-gitops-tenant"},
                {}).kube_clusters() == {"default": Cluster("default", "/k", "c",
                                                           service_accounts=("ray-gitops-tenant",))}
    config.write_text("clusters:\n  prod: {kubeconfg: /x}\n")
    with pytest.raises(Exception, match="setting clusters: cluster prod: unknown keys kubeconfg"):
        load({}, {}, config)


def test_a_connection_that_hangs_fails_its_environments_alone_within_the_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    def hangs(options, runtime):
        release.wait(30)
        raise RuntimeError("never connected")
    local = TYPES["local"]
    types = {**TYPES, "kubernetes": TargetType("kubernetes", TYPES["kubernetes"].options, TYPES["kubernetes"].kinds,
                                               hangs)}
    registry = Registry(Runtime(tmp_path, Metrics(CollectorRegistry()), connect_timeout=0.5), types)
    kube = render(DirectoryTree(environment(tmp_path / "k", "k", "kubernetes: {namespace: k}")), "k", "", registry)
    here = render(DirectoryTree(environment(tmp_path / "l", "l", "local: {}")), "l", "", registry)
    try:
        started = time.monotonic()
        with pytest.raises(TemporaryError, match="connecting to kubernetes default took more than 0 s"):
            registry.get(kube.spec)
        assert time.monotonic() - started < 2
        assert registry.get(here.spec).kind == local.name  # another connection is not held up
    finally:
        release.set()
        registry.close(workloads=False)


@pytest.mark.parametrize("doc, message", [
    pytest.param("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ray-gitops-ledger-b}\ndata: {runs: '{}'}\n",
                 "metadata.name: ray-gitops-ledger-* ConfigMaps are ray-gitops' own ledgers: Git may not hold one",
                 id="a-ledger"),
    pytest.param("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, labels: {gitops.ray.io/environment: b}}\n",
                 "metadata.labels.gitops.ray.io/environment: is ray-gitops' ownership label, set to 'a' for this "
                 "environment; Git may not set it to 'b'", id="another-environments-label"),
])
def test_git_may_not_hold_ray_gitops_own_objects(tmp_path: Path, doc: str, message: str) -> None:
    assert message in errors(environment(tmp_path, "a", "local: {}", doc), "a")


def test_no_two_environment_and_cluster_names_share_a_local_cluster() -> None:
    assert cluster_name("team", "a-x") != cluster_name("team-a", "x")
    assert cluster_name("team", "a.x") != cluster_name("team.a", "x") != cluster_name("team-a", "x")


def test_ray_nodes_get_none_of_the_daemons_settings_or_secrets(tmp_path: Path) -> None:
    daemon = {"PATH": "/usr/bin", "HOME": "/home/d", "LC_ALL": "C.UTF-8", "HTTPS_PROXY": "http://proxy:3128",
              "RAY_GITOPS_WEBHOOK_SECRET": "s3cret", "RAY_GITOPS_GIT_PASSWORD": "token", "KUBECONFIG": "/k",
              "AWS_SECRET_ACCESS_KEY": "x", "RAY_ADDRESS": "10.0.0.1:6379"}
    env = node_environment(daemon, tmp_path / "auth_token")
    assert {k: v for k, v in env.items() if not k.startswith("RAY_")} == {
        "PATH": "/usr/bin", "HOME": "/home/d", "LC_ALL": "C.UTF-8", "HTTPS_PROXY": "http://proxy:3128",
        "PYTHONPATH": PRELOAD_DIR}  # only the module that keeps every worker's gRPC servers on loopback
    assert {k for k in env if k.startswith("RAY_")} == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE",
                                                        "RAY_AUTH_TOKEN_PATH", "RAY_preload_python_modules"}


def test_a_stuck_reconcile_is_reported_on_its_environment_and_a_stalled_daemon_fails_its_liveness(
        tmp_path: Path) -> None:
    from concurrent.futures import Future

    from reconciler.service import daemon as daemon_module
    from reconciler.service.config import Settings
    from reconciler.service.daemon import Daemon
    made = Daemon(Settings(repo=str(tmp_path), state_dir=tmp_path / "state"), CollectorRegistry())
    stuck = Future()
    made._running = {"a": stuck}
    made._started["a"] = time.monotonic() - daemon_module.STUCK - 1
    made._watch_running()
    state = made.ledger.state("a")
    assert state is not None and state.sync_status == "Failed" and state.message.startswith("stuck: a reconcile has "
                                                                                            "been running since")
    assert made.metrics.registry.get_sample_value("ray_gitops_reconcile_stuck", {"environment": "a"}) == 1
    assert made.healthy()  # it started the stall clock when nothing ran: not long enough yet
    made._progress = time.monotonic() - daemon_module.STALL - 1
    assert not made.healthy()  # nothing finished for STALL seconds while a reconcile runs: restart me
    stuck.set_result(None)
    made._watch_running()
    assert made.healthy() and made.metrics.registry.get_sample_value("ray_gitops_reconcile_stuck",
                                                                      {"environment": "a"}) is None
