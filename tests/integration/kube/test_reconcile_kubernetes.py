"""The reconcile stage on the Kubernetes target, end to end on the real API server with real Git:
apply, prune, server errors, the RayJob run ledger, template changes, and a cheap steady state."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.model import Action, Outcome
from reconciler.pipeline.ledger import Ledger
from reconciler.pipeline.reconcile import Pipeline, Result
from reconciler.pipeline.source import GitSource
from reconciler.service.config import derived
from reconciler.targets import Cluster, Registry, Runtime
from tests.conftest import GitRemote

pytestmark = pytest.mark.kube
TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
ENV = "k"
WRITES = ("apply", "create", "update", "delete", "dryrun-apply")


NEIGHBOURS = ("n1", "n2")  # environments reconciled beside `k`, each in its own namespace
INSTALLATION_KEY = b"the-installation-key-of-at-least-32-bytes"


class Harness:
    """Environment `k` (the test's, in `namespace`) and two neighbours holding a RayCluster of the same
    name `a` and a ConfigMap; every reconcile runs the three at once, as the daemon does."""

    def __init__(self, remote: GitRemote, state: Path, plane, namespace: str) -> None:
        self.remote, self.namespace, self.state, self.plane = remote, namespace, state, plane
        self.start()
        self.core = client.CoreV1Api(plane.api_client())
        self.api = client.CustomObjectsApi(plane.api_client())
        self.neighbours = {env: f"{namespace}-{env}" for env in NEIGHBOURS}
        for env, ns in {ENV: namespace, **self.neighbours}.items():
            remote.write(f"environments/{env}/environment.yaml", f"""\
apiVersion: gitops.ray.io/v1alpha1
kind: Environment
metadata: {{name: {env}}}
spec:
  target:
    kubernetes: {{namespace: {ns}}}
  interval: 5s
""")
        for env, ns in self.neighbours.items():
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            remote.write(f"environments/{env}/a.yaml", cluster("a"))
            remote.write(f"environments/{env}/settings.yaml",
                         f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{owner: {env}}}\n")

    def start(self) -> None:
        """A new process's pipeline and targets: empty caches, the same state dir."""
        self.metrics = Metrics(CollectorRegistry())
        self.source = GitSource(self.remote.url, "main", self.state / "git", self.metrics.git_request)
        self.ledger = Ledger(self.state)
        self.targets = Registry(Runtime(self.state, self.metrics, clusters={
            "default": Cluster("default", str(self.plane.kubeconfig), self.plane.context)},
            ledger_key=derived(INSTALLATION_KEY, "ledger-copies")))
        self.reconciler = Pipeline(self.source, self.ledger, self.metrics, self.targets,
                                   checkouts=self.state / "checkouts")

    def reconcile(self) -> Result:
        """Reconcile the three environments concurrently; check the neighbours; `k`'s result."""
        revision = self.source.fetch()
        envs = (ENV, *NEIGHBOURS)
        with ThreadPoolExecutor(3) as pool:
            results = dict(zip(envs, pool.map(lambda env: self.reconciler.reconcile(env, revision), envs), strict=True))
        for env, ns in self.neighbours.items():
            assert results[env].result != "error", results[env].message
            clusters = self.api.list_namespaced_custom_object("ray.io", "v1", ns, "rayclusters")["items"]
            assert [(c["metadata"]["name"], c["metadata"]["labels"]["gitops.ray.io/environment"])
                    for c in clusters] == [("a", env)]
            owned = self.core.list_namespaced_config_map(ns, label_selector="gitops.ray.io/environment").items
            assert {c.metadata.name: (c.data or {}).get("owner") for c in owned} == {
                "settings": env, f"ray-gitops-ledger-{env}": None}
        return results[ENV]

    def close(self) -> None:
        self.targets.close()
        for ns in self.neighbours.values():
            self.core.delete_namespace(ns)

    def objects(self, plural: str) -> dict[str, dict]:
        items = self.api.list_namespaced_custom_object("ray.io", "v1", self.namespace, plural)["items"]
        return {o["metadata"]["name"]: o for o in items}

    def writes(self) -> float:
        get = self.metrics.registry.get_sample_value
        return sum(get("ray_gitops_kube_requests_total", {"verb": verb}) or 0 for verb in WRITES)


@pytest.fixture
def harness(remote: GitRemote, tmp_path: Path, kube_control_plane, kube_namespace: str):
    h = Harness(remote, tmp_path / "state", kube_control_plane, kube_namespace)
    yield h
    h.close()


def cluster(name: str, replicas: int = 1, image: str = "rayproject/ray:2.60.0", labels: str = "") -> str:
    text = (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", str(replicas))
    text = text.replace("name: demo}", f"name: {name}{labels}}}")
    return text.replace("image: rayproject/ray:2.60.0\n          resources", f"image: {image}\n          resources")


def test_apply_then_prune_only_what_left_git(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.write(f"environments/{ENV}/b.yaml", cluster("b"))
    harness.remote.commit("two clusters")
    first = harness.reconcile()
    assert (first.result, first.sync_status) == ("success", "Synced"), first.message
    live = harness.objects("rayclusters")
    assert set(live) == {"a", "b"}
    assert live["a"]["metadata"]["labels"]["gitops.ray.io/environment"] == ENV
    assert live["a"]["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 4

    harness.remote.remove(f"environments/{ENV}/b.yaml")
    harness.remote.commit("drop b")
    second = harness.reconcile()

    assert [(i.ref.name, o) for i, o in second.outcomes] == [("b", Outcome.DELETED)]
    assert set(harness.objects("rayclusters")) == {"a"}


def test_steady_state_does_no_writes_and_no_dry_runs(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.commit("one cluster")
    harness.reconcile()
    harness.reconcile()  # the first dry-run of the applied object
    before = harness.writes()

    for _ in range(3):
        assert harness.reconcile().result == "noop"

    assert harness.writes() == before


def test_object_the_server_rejects_fails_alone_and_deletes_nothing(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.commit("one cluster")
    harness.reconcile()
    harness.remote.write(f"environments/{ENV}/bad.yaml", cluster("bad", labels=", labels: {team: 'not valid!'}"))
    harness.remote.write(f"environments/{ENV}/c.yaml", cluster("c"))
    harness.remote.commit("a bad label and a good cluster")

    result = harness.reconcile()

    assert result.sync_status == "Failed"
    assert "environments/k/bad.yaml" in result.message and "metadata.labels" in result.message
    assert set(harness.objects("rayclusters")) == {"a", "c"}


def test_pod_template_change_is_pending_restart_unless_recreate_is_asked(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.commit("one cluster")
    harness.reconcile()
    uid = harness.objects("rayclusters")["a"]["metadata"]["uid"]

    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a", image="rayproject/ray:2.61.0"))
    harness.remote.commit("new image")
    [(item, outcome)] = harness.reconcile().outcomes
    assert (item.action, outcome) == (Action.UPDATE, Outcome.CONFIGURED) and "pending restart" in item.reason
    assert harness.objects("rayclusters")["a"]["metadata"]["uid"] == uid

    recreate = ", annotations: {gitops.ray.io/on-template-change: recreate}"
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a", image="rayproject/ray:2.62.0", labels=recreate))
    harness.remote.commit("newer image, recreate")
    [(item, outcome)] = harness.reconcile().outcomes
    assert (item.action, outcome) == (Action.RECREATE, Outcome.RECREATED)
    assert harness.objects("rayclusters")["a"]["metadata"]["uid"] != uid


def test_finished_rayjob_deleted_by_its_ttl_is_not_recreated_and_a_new_spec_is_a_new_run(harness: Harness) -> None:
    job = (TESTDATA / "rayjob.yaml").read_text()
    harness.remote.write(f"environments/{ENV}/job.yaml", job)
    harness.remote.commit("a job")
    harness.reconcile()
    [first] = harness.objects("rayjobs").values()
    run = first["spec"]["jobId"]
    assert run.startswith(f"{ENV}-count-")

    harness.api.patch_namespaced_custom_object_status(  # what the operator writes when the run ends
        "ray.io", "v1", harness.namespace, "rayjobs", "count",
        {"status": {"jobId": run, "jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}})
    harness.reconcile()
    assert harness.ledger.load(ENV).finished == {run: "succeeded"}
    harness.api.delete_namespaced_custom_object("ray.io", "v1", harness.namespace, "rayjobs", "count")  # the TTL
    assert harness.reconcile().outcomes == []
    assert harness.objects("rayjobs") == {}

    harness.remote.write(f"environments/{ENV}/job.yaml", job.replace("range(10)", "range(20)"))
    harness.remote.commit("a new spec")
    [(item, outcome)] = harness.reconcile().outcomes
    assert outcome == Outcome.SUBMITTED
    [second] = harness.objects("rayjobs").values()
    assert second["spec"]["jobId"] not in (run, "") and second["spec"]["jobId"].startswith(f"{ENV}-count-")


def test_diff_command_exits_1_before_apply_and_0_after(harness: Harness, tmp_path: Path, kube_control_plane,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.commands.cli import main
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.commit("one cluster")
    config = tmp_path / "ray-gitops.yaml"  # the daemon's settings name the cluster `default` (no path in Git)
    config.write_text(f"clusters:\n  default: {{kubeconfig: '{kube_control_plane.kubeconfig}', "
                      f"context: {kube_control_plane.context}}}\n")
    args = ["diff", "--repo", harness.remote.url, "--environment", ENV, "--state-dir", str(tmp_path / "cli"),
            "--config", str(config)]

    assert main(args) == 1
    assert "create RayCluster/" in capsys.readouterr().out
    harness.reconcile()
    assert main(args) == 0


def test_changes_leave_events_with_the_revision_creations_and_a_steady_state_leave_none(
        harness: Harness, kube_control_plane) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.write(f"environments/{ENV}/b.yaml", cluster("b"))
    harness.remote.commit("two clusters")
    harness.reconcile()
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a", labels=", labels: {tier: gold}"))
    harness.remote.remove(f"environments/{ENV}/b.yaml")
    sha = harness.remote.commit("a labelled, b removed")
    harness.reconcile()
    harness.reconcile()
    harness.targets.close()  # writes the Events still queued
    core = client.CoreV1Api(kube_control_plane.api_client())

    events = sorted(core.list_namespaced_event(harness.namespace).items, key=lambda e: e.involved_object.name)

    assert [(e.reason, e.involved_object.kind, e.involved_object.name, e.type) for e in events] == [
        ("Updated", "RayCluster", "a", "Normal"), ("Pruned", "RayCluster", "b", "Normal")]
    assert all(sha[:12] in e.message and e.involved_object.uid for e in events)


def test_plan_from_an_empty_state_dir_still_sees_prunes_through_the_cluster_ledger(
        harness: Harness, tmp_path: Path, kube_control_plane, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.commands.cli import main
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.write(f"environments/{ENV}/b.yaml", cluster("b"))
    harness.remote.commit("two clusters")
    harness.reconcile()
    harness.remote.remove(f"environments/{ENV}/b.yaml")
    harness.remote.commit("drop b")

    key = tmp_path / "installation-key"  # the daemon's key file (a mounted Secret): a fresh machine reads it too
    key.write_bytes(INSTALLATION_KEY)
    config = tmp_path / "ray-gitops.yaml"
    config.write_text(f"installation_key_file: {key}\nclusters:\n"
                      f"  default: {{kubeconfig: '{kube_control_plane.kubeconfig}', "
                      f"context: {kube_control_plane.context}}}\n")
    args = ["plan", "--repo", harness.remote.url, "--environment", ENV, "--state-dir", str(tmp_path / "fresh"),
            "--config", str(config)]
    assert main(args) == 1
    assert "delete RayCluster/" in capsys.readouterr().out
    key.write_bytes(b"another-installation-key-of-32-bytes")  # a copy signed with another key is not believed
    assert main(args) == 0


def test_an_environment_writes_with_its_service_account_rights_only(harness: Harness) -> None:
    """`serviceAccountName`: every write impersonates it. Its Role allows RayClusters and the ledger
    ConfigMap's POST/PUT, not a server-side apply (PATCH) of ConfigMaps: the ConfigMap from Git is refused
    by the server and reported on that object; the RayCluster is applied; nothing else changes."""
    ns = harness.namespace
    rbac = client.RbacAuthorizationV1Api(harness.core.api_client)
    harness.core.create_namespaced_service_account(ns, {"metadata": {"name": "tenant"}})
    rules = [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
              "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
             {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    rbac.create_namespaced_role(ns, {"metadata": {"name": "tenant"}, "rules": rules})
    rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "tenant"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                     "name": "tenant"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]})
    env_file = f"environments/{ENV}/environment.yaml"
    text = (harness.remote.work_path / env_file).read_text()
    harness.remote.write(env_file, text.replace("namespace: ", "serviceAccountName: tenant, namespace: "))
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.write(f"environments/{ENV}/settings.yaml",
                         "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n")
    harness.remote.commit("a cluster and a ConfigMap the tenant may not apply")

    result = harness.reconcile()

    assert result.sync_status == "Failed"
    assert f"ConfigMap/{ns}/settings create failed" in result.message and "403" in result.message
    assert f'User "system:serviceaccount:{ns}:tenant" cannot patch resource "configmaps"' in result.message
    assert set(harness.objects("rayclusters")) == {"a"}
    configmaps = {c.metadata.name for c in harness.core.list_namespaced_config_map(ns).items}
    assert "settings" not in configmaps and f"ray-gitops-ledger-{ENV}" in configmaps


def test_a_restart_sends_no_dry_run_for_what_it_applied_unless_someone_else_wrote_it_since(harness: Harness) -> None:
    harness.remote.write(f"environments/{ENV}/a.yaml", cluster("a"))
    harness.remote.write(f"environments/{ENV}/b.yaml", cluster("b"))
    harness.remote.commit("two clusters")
    harness.reconcile()
    harness.api.patch_namespaced_custom_object(  # someone else's label (not drift: Git does not set it)
        "ray.io", "v1", harness.namespace, "rayclusters", "b", {"metadata": {"labels": {"team": "ml"}}},
        field_manager="kubectl-label")
    harness.targets.close()

    harness.start()
    assert harness.reconcile().result == "noop"
    dry_runs = harness.metrics.registry.get_sample_value("ray_gitops_kube_requests_total", {"verb": "dryrun-apply"})
    assert dry_runs == 1, "only b, which kubectl-label wrote after us (the neighbours' objects need none)"
    assert harness.writes() == 1  # that dry-run: nothing written
    assert harness.objects("rayclusters")["b"]["metadata"]["labels"]["team"] == "ml"
