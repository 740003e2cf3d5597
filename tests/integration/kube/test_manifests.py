"""The deployment manifests (`manifests/`, a kustomize base) against a real kube-apiserver.

`kubectl kustomize manifests/` renders them with the kubectl that tests/controlplane/build.sh built
(kustomize is part of kubectl). Then, on the test control plane:
- `kubectl apply -k manifests/` (the README's command) creates every object, with no Pod Security
  warning, and a server-side dry-run apply of every rendered object passes the API server's
  validation (OpenAPI schemas, CRD schemas, admission).
- The pod template is admitted in a namespace that enforces the "restricted" Pod Security Standard,
  and a copy without its security contexts is not (so the check is live).
- The ServiceAccount's permissions, asked of the API server's RBAC authorizer (SubjectAccessReview,
  SelfSubjectRulesReview while impersonating the ServiceAccount), are exactly the README's list.

ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1): the control plane only has the KubeRay
CRDs, so this module installs the Prometheus operator's two CRDs from its Go module (the same way the
KubeRay CRDs come from theirs). That validates their structure against the operator's schema. It does
not validate PromQL: the operator checks expressions in a webhook and Prometheus when it loads the
rule, and neither runs here. So every PromQL expression in the rules and in the Grafana dashboard is
also checked here by a regex-based reading: each metric name it references must be one that
reconciler/metrics.py defines (with the `_total`/`_bucket`/`_sum`/`_count` suffix its type gives),
and each label in a selector must be one of that metric's labels. A PromQL syntax error that keeps
the names intact would pass.

Only Namespace, ServiceAccount, RBAC, ConfigMaps, Service and Deployment objects are created: there
is no kubelet and no controller, so no pod runs. The image itself is not built or run here.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kube_controlplane
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from reconciler.commands import cli
from reconciler.service import config
from reconciler.metrics import Metrics

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"
NAMESPACE = "ray-gitops"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:ray-gitops"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated"]
KUBECTL_TIMEOUT_S = 60
PROMETHEUS_OPERATOR_VERSION = kube_controlplane.read_versions()["PROMETHEUS_OPERATOR_VERSION"]
MONITORING_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")

# README "Kubernetes target": what the daemon needs, per resource; nothing else is allowed.
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
ALL_WRITE = {"get", "list", "watch", "create", "patch", "update", "delete"}
CLUSTER_WIDE = {
    ("ray.io", "rayclusters"): ALL_WRITE,
    ("ray.io", "rayjobs"): ALL_WRITE,
    ("ray.io", "rayservices"): ALL_WRITE,
    ("", "configmaps"): ALL_WRITE,
    ("", "secrets"): ALL_WRITE,
    ("", "pods"): {"list", "watch"},
    ("", "events"): {"create"},
}
LEASE = ("coordination.k8s.io", "leases")
LEASE_NAME = "ray-gitops"
# Resources the daemon must NOT reach (subresources as "resource/subresource").
NOT_GRANTED = [
    ("ray.io", "rayclusters/status"), ("ray.io", "rayjobs/status"), ("", "pods/log"), ("", "pods/exec"),
    ("", "services"), ("", "serviceaccounts"), ("", "persistentvolumeclaims"),
    ("", "namespaces"), ("", "nodes"), ("apps", "deployments"), ("batch", "jobs"),
    ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "rolebindings"), ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("coordination.k8s.io", "leases"),
]


# -- helpers -------------------------------------------------------------------------------------------
def run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = KUBECTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run to completion (killed at `timeout` by subprocess.run), never through a shell."""
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)


def kind_name(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[kind_name(o) for o in found]}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [only] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def container_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """What the process sees: the ConfigMap (envFrom) overridden by `env`, as the kubelet does."""
    c = container(objects)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


def defined_metrics() -> dict[str, tuple[str, ...]]:
    """Every series name reconciler/metrics.py exports -> its labels (histogram buckets add `le`)."""
    metrics = Metrics(CollectorRegistry())
    names: dict[str, tuple[str, ...]] = {}
    for metric in vars(metrics).values():
        kind = getattr(metric, "_type", None)
        if kind is None:
            continue
        labels = tuple(metric._labelnames)
        if kind == "counter":
            names[f"{metric._name}_total"] = labels
        elif kind == "histogram":
            names.update({f"{metric._name}_bucket": labels + ("le",), f"{metric._name}_sum": labels,
                          f"{metric._name}_count": labels})
        else:
            names[metric._name] = labels
    return names


PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                   "group_left", "group_right", "inf", "nan", "atan2"}


def promql_references(expr: str) -> dict[str, set[str]]:
    """Metric names an expression references -> label names used in their selectors.

    A reading by regexes, not a PromQL parser: strings, selectors, ranges, grouping clauses and Grafana
    variables are removed; an identifier not followed by `(` and not a keyword is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values may hold { } [ ]
    text = re.sub(r"\$\{?\w+\}?", "", text)
    refs: dict[str, set[str]] = {}
    for name, selector in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", text):
        refs.setdefault(name, set()).update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if word in PROMQL_KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        refs.setdefault(word, set())
    return refs


def assert_uses_defined_metrics(where: str, expr: str) -> set[str]:
    defined = defined_metrics()
    refs = promql_references(expr)
    assert refs, f"{where}: no metric in {expr!r}"
    for name, labels in refs.items():
        assert name in defined, f"{where}: {name!r} is not a metric reconciler/metrics.py defines: {expr!r}"
        assert labels <= set(defined[name]), (
            f"{where}: {name} has labels {defined[name]}, the selector uses {sorted(labels)}: {expr!r}")
    return set(refs)


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kubectl_path() -> Path:
    """kubectl from build.sh's assets directory (or PATH, when KUBEBUILDER_ASSETS has none)."""
    path = kube_controlplane.ensure_assets() / "kubectl"
    if not path.exists() and shutil.which("kubectl"):
        path = Path(str(shutil.which("kubectl")))
    assert path.exists(), f"no kubectl in {path.parent} or on PATH (bash {kube_controlplane.BUILD_SCRIPT})"
    return path


@pytest.fixture(scope="module")
def rendered_text(kubectl_path: Path) -> str:
    """`kubectl kustomize manifests/`: the YAML `kubectl apply -k manifests/` sends."""
    proc = run([str(kubectl_path), "kustomize", str(MANIFESTS)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def rendered(rendered_text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text) if doc]


@pytest.fixture(scope="module")
def kubectl(kubectl_path: Path, kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[Any]:
    """kubectl against the test control plane, with its own discovery cache (removed afterwards)."""
    cache = tempfile.mkdtemp(prefix="ray-gitops-kubectl-cache-")

    def call(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([str(kubectl_path), f"--kubeconfig={kube_control_plane.kubeconfig}",
                    f"--context={kube_control_plane.context}", f"--cache-dir={cache}", *args], stdin=stdin)
    try:
        yield call
    finally:
        shutil.rmtree(cache, ignore_errors=True)


@pytest.fixture(scope="module")
def monitoring_crds(kube_control_plane: kube_controlplane.ControlPlane) -> None:
    """The Prometheus operator's ServiceMonitor and PrometheusRule CRDs, from its pinned Go module."""
    module = f"github.com/prometheus-operator/prometheus-operator@v{PROMETHEUS_OPERATOR_VERSION}"
    proc = subprocess.run(["go", "mod", "download", "-json", module], capture_output=True, text=True,
                          check=False, timeout=600, cwd=tempfile.gettempdir(),
                          env={**os.environ, "GOFLAGS": "-mod=mod"})
    info = json.loads(proc.stdout or "{}")
    assert proc.returncode == 0 and "Dir" in info, f"go mod download {module}: {info.get('Error', proc.stderr)}"
    crds = Path(info["Dir"]) / "example" / "prometheus-operator-crd"
    kube_control_plane.install_crds([crds / name for name in MONITORING_CRDS])


@pytest.fixture(scope="module")
def applied(kubectl: Any, monitoring_crds: None) -> Iterator[subprocess.CompletedProcess[str]]:
    """`kubectl apply -k manifests/` for real; afterwards `kubectl delete -k` (the Namespace then stays
    Terminating: there is no namespace controller, and the control plane goes at the session's end)."""
    proc = kubectl("apply", "-k", str(MANIFESTS))
    assert proc.returncode == 0, f"kubectl apply -k manifests/ failed:\n{proc.stdout}\n{proc.stderr}"
    try:
        yield proc
    finally:
        kubectl("delete", "-k", str(MANIFESTS), "--wait=false", "--ignore-not-found")


@pytest.fixture
def api(kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[client.ApiClient]:
    with kube_control_plane.api_client() as api_client:
        yield api_client


# -- rendering -----------------------------------------------------------------------------------------
def test_kustomize_renders_the_namespace_rbac_deployment_service_monitoring_and_dashboard(
        rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(kind_name(o) for o in rendered if o["kind"] != "ConfigMap")
    assert kinds == sorted([
        ("Namespace", NAMESPACE), ("ServiceAccount", "ray-gitops"), ("ClusterRole", "ray-gitops"),
        ("ClusterRoleBinding", "ray-gitops"), ("Role", "ray-gitops-leader-election"),
        ("RoleBinding", "ray-gitops-leader-election"), ("Deployment", "ray-gitops"),
        ("Service", "ray-gitops-metrics"), ("ServiceMonitor", "ray-gitops"), ("PrometheusRule", "ray-gitops")])
    config_maps = sorted(o["metadata"]["name"] for o in rendered if o["kind"] == "ConfigMap")
    assert len(config_maps) == 2 and config_maps[1] == "ray-gitops-grafana-dashboard"
    assert re.fullmatch(r"ray-gitops-config-[a-z0-9]{10}", config_maps[0])  # content hash: a change rolls the pod
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for obj in rendered:
        assert obj["metadata"].get("namespace") == (None if obj["kind"] in cluster_scoped else NAMESPACE), obj["kind"]
        assert obj["metadata"]["labels"].get("app.kubernetes.io/managed-by") != "ray-gitops", (
            f"{kind_name(obj)}: the daemon's ownership label would make it prunable by the daemon")


def test_an_overlay_sets_the_repository_and_the_image_and_the_pod_gets_the_new_config(
        kubectl_path: Path, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, tmp_path)],
        "images": [{"name": "ray-gitops", "newName": "registry.example.com/platform/ray-gitops", "newTag": "0.1.0"}],
        "configMapGenerator": [{"name": "ray-gitops-config", "behavior": "merge", "literals": [
            "RAY_GITOPS_REPO=git@github.com:acme/ray-config.git", "RAY_GITOPS_BRANCH=production"]}],
    }))
    proc = run([str(kubectl_path), "kustomize", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    env = container_env(objects)
    assert (env["RAY_GITOPS_REPO"], env["RAY_GITOPS_BRANCH"], env["RAY_GITOPS_INTERVAL"]) == (
        "git@github.com:acme/ray-config.git", "production", "30s")
    assert container(objects)["image"] == "registry.example.com/platform/ray-gitops:0.1.0"


# -- the real API server -------------------------------------------------------------------------------
def test_kubectl_apply_k_creates_every_object_without_a_pod_security_warning(
        applied: subprocess.CompletedProcess[str], rendered: list[dict[str, Any]]) -> None:
    assert "Warning" not in applied.stderr, applied.stderr
    lines = applied.stdout.splitlines()
    for obj in rendered:
        kind, name = kind_name(obj)
        pattern = rf"{kind.lower()}(\.[\w.]+)?/{re.escape(name)} (created|configured|unchanged)"
        assert any(re.fullmatch(pattern, line) for line in lines), f"{kind}/{name} not in:\n{applied.stdout}"


def test_a_server_side_dry_run_apply_of_every_rendered_object_passes_validation(
        applied: subprocess.CompletedProcess[str], kubectl: Any, rendered_text: str,
        rendered: list[dict[str, Any]]) -> None:
    proc = kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=ray-gitops-manifests-test",
                   "--validate=strict", "-f", "-", stdin=rendered_text)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "Warning" not in proc.stderr, proc.stderr
    done = [line for line in proc.stdout.splitlines() if line.endswith("serverside-applied (server dry run)")]
    assert len(done) == len(rendered), proc.stdout


def test_the_pod_template_is_admitted_where_the_restricted_pod_security_standard_is_enforced(
        applied: subprocess.CompletedProcess[str], rendered: list[dict[str, Any]], api: client.ApiClient) -> None:
    namespace = one(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    template = one(rendered, "Deployment")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray-gitops-template", **template["metadata"]},
           "spec": template["spec"]}
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")  # raises 403 if the template violates it

    insecure = copy.deepcopy(pod)
    del insecure["spec"]["securityContext"], insecure["spec"]["containers"][0]["securityContext"]
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(NAMESPACE, insecure, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)


def test_the_service_account_may_do_exactly_what_the_readme_lists_and_nothing_else(
        applied: subprocess.CompletedProcess[str], api: client.ApiClient) -> None:
    authz = client.AuthorizationV1Api(api)

    def allowed(namespace: str, group: str, resource: str, verb: str, name: str = "") -> bool:
        resource, _, subresource = resource.partition("/")
        review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=SERVICE_ACCOUNT, groups=SA_GROUPS, resource_attributes=client.V1ResourceAttributes(
                namespace=namespace, group=group, resource=resource, subresource=subresource or None,
                verb=verb, name=name or None))))
        return bool(review.status.allowed)

    target = "ray-prod"  # any namespace an environment may target: the rules are cluster-wide
    for namespace in (target, NAMESPACE, ""):
        for (group, resource), verbs in CLUSTER_WIDE.items():
            granted = {v for v in VERBS if allowed(namespace, group, resource, v)}
            assert granted == verbs, f"{group or 'core'}/{resource} in {namespace or 'all namespaces'}"
        for group, resource in NOT_GRANTED:
            if (group, resource) == LEASE and namespace == NAMESPACE:
                continue
            granted = {v for v in VERBS if allowed(namespace, group, resource, v)}
            assert granted == set(), f"{group or 'core'}/{resource} in {namespace or 'all namespaces'}"

    # Leader election: create any Lease (create cannot be limited by name), read and renew only ours.
    lease = {v for v in VERBS if allowed(NAMESPACE, *LEASE, v, LEASE_NAME)}
    assert lease == {"get", "update", "create"}
    assert {v for v in VERBS if allowed(NAMESPACE, *LEASE, v, "another-lease")} == {"create"}
    assert {v for v in VERBS if allowed(NAMESPACE, *LEASE, v)} == {"create"}  # no list, no watch
    assert config.Settings().leader_election_id == LEASE_NAME  # the daemon's default Lease name


def test_the_authorizer_lists_no_rule_for_the_service_account_beyond_the_readme(
        applied: subprocess.CompletedProcess[str], kube_control_plane: kube_controlplane.ControlPlane) -> None:
    """SelfSubjectRulesReview as the ServiceAccount, minus what any ServiceAccount gets (discovery)."""

    def rules(user: str, namespace: str) -> set[tuple[str, str, str, str]]:
        with kube_control_plane.api_client() as api_client:
            api_client.set_default_header("Impersonate-User", user)
            review = client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
                client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace)))
        assert not review.status.incomplete, review.status.evaluation_error
        return {(group, resource, name, verb) for rule in review.status.resource_rules
                for group in rule.api_groups or [""] for resource in rule.resources or []
                for name in rule.resource_names or ["*"] for verb in rule.verbs}

    def expected(namespace: str) -> set[tuple[str, str, str, str]]:
        out = {(g, r, "*", v) for (g, r), verbs in CLUSTER_WIDE.items() for v in verbs}
        if namespace == NAMESPACE:
            out |= {(*LEASE, "*", "create"), (*LEASE, LEASE_NAME, "get"), (*LEASE, LEASE_NAME, "update")}
        return out

    for namespace in ("ray-prod", NAMESPACE):
        baseline = rules(f"system:serviceaccount:{NAMESPACE}:someone-else", namespace)
        assert rules(SERVICE_ACCOUNT, namespace) - baseline == expected(namespace), namespace


# -- the pod's settings, as the daemon reads them -------------------------------------------------------
def test_the_container_runs_as_non_root_on_a_read_only_root_with_no_capabilities(
        rendered: list[dict[str, Any]]) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    security = container(rendered)["securityContext"]
    assert security["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"} == pod["securityContext"]["seccompProfile"]
    assert container(rendered)["resources"]["requests"] and container(rendered)["resources"]["limits"]


def test_every_path_the_daemon_and_git_write_is_on_a_writable_volume(rendered: list[dict[str, Any]]) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [path for path, m in mounts.items() if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]]
    env = container_env(rendered)
    for path in (env["RAY_GITOPS_STATE_DIR"], env["HOME"], env["XDG_CACHE_HOME"], "/tmp"):
        assert any(path == w or path.startswith(w + "/") for w in writable), f"{path} is not under {writable}"
    credentials = volumes[mounts["/etc/ray-gitops/git"]["name"]]["secret"]
    assert credentials["secretName"] == "ray-gitops-git-credentials" and credentials["optional"] is True
    assert mounts["/etc/ray-gitops/git"]["readOnly"] is True


def test_the_deployment_args_and_environment_parse_into_leader_elected_settings_on_port_9464(
        rendered: list[dict[str, Any]]) -> None:
    c = container(rendered)
    args = cli.parser().parse_args(c["args"])
    assert args.func is cli.cmd_run
    env = container_env(rendered)
    settings = config.load(vars(args), environ={k: v for k, v in env.items() if k.startswith("RAY_GITOPS_")})
    assert settings.leader_election is True
    assert settings.repo == "https://github.com/example/ray-gitops-config.git"
    assert (settings.branch, settings.interval, settings.log_format) == ("main", 30.0, "json")
    assert settings.host_port == ("0.0.0.0", 9464)
    assert str(settings.state_dir) == "/var/lib/ray-gitops/state"
    [port] = c["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", settings.host_port[1])
    probes = {probe: c[probe]["httpGet"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": {"path": "/healthz", "port": "metrics"},
                      "livenessProbe": {"path": "/healthz", "port": "metrics"},
                      "readinessProbe": {"path": "/readyz", "port": "metrics"}}
    deployment = one(rendered, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and "--leader-election" in c["args"]
    assert not any("$(" in value for value in env.values()), "the kubelet would expand $(...) in an env value"


def test_the_git_credential_helper_answers_with_the_mounted_username_and_password(
        rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    env = container_env(rendered)
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    git_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
               **{k: v.replace("/etc/ray-gitops/git", str(secret_dir)) for k, v in env.items()
                  if k.startswith("GIT_CONFIG_") or k == "GIT_TERMINAL_PROMPT"}}

    def fill() -> subprocess.CompletedProcess[str]:
        return run(["git", "credential", "fill"], stdin="protocol=https\nhost=git.example.com\n\n", env=git_env,
                   timeout=30)

    (secret_dir / "password").write_text("s3cret-token")  # no trailing newline, as `kubectl create secret` writes
    answer = fill()
    assert answer.returncode == 0, answer.stderr
    assert "username=x-access-token\npassword=s3cret-token\n" in answer.stdout

    (secret_dir / "username").write_text("deploy-bot\n")
    assert "username=deploy-bot\npassword=s3cret-token\n" in fill().stdout

    (secret_dir / "password").unlink()
    (secret_dir / "username").unlink()
    answer = fill()  # no Secret mounted: git gives up at once instead of prompting
    assert answer.returncode != 0 and "terminal prompts disabled" in answer.stderr


def test_the_git_ssh_command_checks_host_keys_with_the_mounted_key_and_known_hosts(
        rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client on this machine to parse GIT_SSH_COMMAND")
    command = container_env(rendered)["GIT_SSH_COMMAND"].replace("/etc/ray-gitops/git", str(tmp_path))
    (tmp_path / "ssh-privatekey").write_text("")  # ssh -G leaves out an identity file that does not exist
    argv = shlex.split(command)
    assert argv[0] == "ssh"
    proc = run([*argv, "-F", "none", "-G", "git.example.com"], timeout=30)  # -G: print the config, no connection
    assert proc.returncode == 0, proc.stderr
    effective = {tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if " " in line}
    assert {("identityfile", f"{tmp_path}/ssh-privatekey"), ("identitiesonly", "yes"),
            ("userknownhostsfile", f"{tmp_path}/known_hosts"), ("stricthostkeychecking", "true"),
            ("batchmode", "yes")} <= effective


# -- Prometheus and Grafana ----------------------------------------------------------------------------
def test_the_service_monitor_scrapes_the_metrics_port_of_the_daemon_pods(rendered: list[dict[str, Any]]) -> None:
    monitor, service = one(rendered, "ServiceMonitor"), one(rendered, "Service")
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = service["spec"]["ports"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert port["targetPort"] == container(rendered)["ports"][0]["name"]


REQUIRED_ALERTS = {  # alert -> (metric, what its expression must contain, `for`)
    "RayGitopsReconcileFailing": ("ray_gitops_reconcile_total", 'result="error"}[15m]', None),
    "RayGitopsEnvironmentOutOfSync": ("ray_gitops_environment_info", "sync_status!~", "30m"),
    "RayGitopsDriftDetected": ("ray_gitops_drifted_objects", "> 0", "15m"),
    "RayGitopsRayJobFailed": ("ray_gitops_rayjob_runs_total", 'result="failed"}[1h]', None),
    "RayGitopsGitFetchFailing": ("ray_gitops_git_last_fetch_success_timestamp_seconds", "> 600", "5m"),
}


def test_the_alert_rules_are_complete_and_reference_only_metrics_the_daemon_exports(
        rendered: list[dict[str, Any]]) -> None:
    rule = one(rendered, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts: dict[str, dict[str, Any]] = {}
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for alert in group["rules"]:
            assert alert["alert"] not in alerts, f"duplicate alert {alert['alert']}"
            assert alert["labels"]["severity"] in ("info", "warning", "critical")
            assert alert["annotations"]["summary"] and alert["annotations"]["description"]
            if "for" in alert:
                assert re.fullmatch(r"\d+[smh]", alert["for"]), alert
            alerts[alert["alert"]] = alert
            assert_uses_defined_metrics(alert["alert"], alert["expr"])
    for name, (metric, fragment, duration) in REQUIRED_ALERTS.items():
        expr = alerts[name]["expr"]
        assert metric in expr and fragment in expr, f"{name}: {expr}"
        assert alerts[name].get("for") == duration, name
    out_of_sync = promql_references(alerts["RayGitopsEnvironmentOutOfSync"]["expr"])
    assert out_of_sync == {"ray_gitops_environment_info": {"sync_status"}}


REQUIRED_PANELS = {  # title -> metric series its queries must reference
    "Sync status per environment": {"ray_gitops_environment_info"},
    "Commit-to-applied latency": {"ray_gitops_commit_to_applied_seconds_bucket"},
    "Workers desired vs ready per group": {"ray_gitops_raycluster_workers"},
    "RayJob runs by result": {"ray_gitops_rayjob_runs_total"},
    "RayJob run durations": {"ray_gitops_rayjob_duration_seconds_bucket", "ray_gitops_rayjob_duration_seconds_sum",
                             "ray_gitops_rayjob_duration_seconds_count"},
}


def test_the_grafana_dashboard_parses_and_every_panel_queries_metrics_the_daemon_exports(
        rendered: list[dict[str, Any]]) -> None:
    cm = one(rendered, "ConfigMap", "ray-gitops-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    [(filename, text)] = cm["data"].items()
    assert filename.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard["uid"] and dashboard["title"]
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    assert len(panels) == len(dashboard["panels"]) == len({p["id"] for p in dashboard["panels"]})
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
            assert label in defined_metrics()[metric], variable
    used: dict[str, set[str]] = {}
    for title, panel in panels.items():
        assert panel["targets"], title
        for target in panel["targets"]:
            used.setdefault(title, set()).update(assert_uses_defined_metrics(f"panel {title!r}", target["expr"]))
    for title, metrics in REQUIRED_PANELS.items():
        assert metrics <= used[title], f"panel {title!r} queries {used.get(title)}"
    assert "histogram_quantile" in json.dumps(panels["Commit-to-applied latency"]["targets"])
    workers = json.dumps(panels["Workers desired vs ready per group"]["targets"])
    assert "desired" in workers and "ready" in workers
    assert "by (environment, result)" in panels["RayJob runs by result"]["targets"][0]["expr"]


def test_the_promql_reader_finds_metric_names_and_selector_labels() -> None:
    """The regex reading the two tests above rely on: it must not miss a metric, or invent one."""
    refs = promql_references('histogram_quantile(0.9, sum by (environment, le) (rate(ray_gitops_x_bucket'
                             '{environment=~"$environment",a!="b{c}"}[5m]))) / on (job) ray_gitops_y offset 5m '
                             'or absent(ray_gitops_z) and vector(1)')
    assert refs == {"ray_gitops_x_bucket": {"environment", "a"}, "ray_gitops_y": set(), "ray_gitops_z": set()}
    with pytest.raises(AssertionError, match="not a metric"):
        assert_uses_defined_metrics("t", "rate(ray_gitops_reconcile_errors_total[5m])")
    with pytest.raises(AssertionError, match="labels"):
        assert_uses_defined_metrics("t", 'ray_gitops_drifted_objects{cluster="a"}')
