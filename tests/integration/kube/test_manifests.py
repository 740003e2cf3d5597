"""The deployment manifests (`manifests/`, a kustomize base) against a real kube-apiserver.

`kubectl kustomize manifests/` renders them with the kubectl that tests/controlplane/build.sh built
(kustomize is part of kubectl). Then, on the test control plane:
- `kubectl apply -k manifests/` (the command of docs/operations.md) creates every object, with no Pod Security
  warning, and a server-side dry-run apply of every rendered object passes the API server's
  validation (OpenAPI schemas, CRD schemas, admission).
- The pod template is admitted in a namespace that enforces the "restricted" Pod Security Standard,
  and a copy without its security contexts is not (so the check is live).
- RBAC, for each variant (components/direct, the base's default, and components/impersonation, installed
  over it with `kubectl apply -k` as an operator switches) and for the tenants' service accounts
  (manifests/tenant/ in two onboarded namespaces): what each identity may do, asked of the API server's
  RBAC authorizer (SubjectAccessReview per resource, verb and name; SelfSubjectRulesReview while
  impersonating it), is exactly the table of "The Kubernetes target" (docs/targets.md), and "Permissions"
  (docs/operations.md) lists exactly the rendered roles and their bindings. Then real requests with the
  ServiceAccount's own token:
  the daemon's KubernetesTarget sends every request kind it has with the direct variant's rights alone,
  and with the impersonation variant (its default_service_account setting) in an onboarded namespace,
  while in another one its writes are refused; raw requests show the daemon writes only while
  impersonating an onboarded tenant's account, and only in that tenant's namespace.

ServiceMonitor and PrometheusRule (monitoring.coreos.com/v1): the control plane only has the KubeRay
CRDs, so this module installs the Prometheus operator's two CRDs from its Go module (the same way the
KubeRay CRDs come from theirs). That validates their structure against the operator's schema. It does
not validate PromQL: the operator checks expressions in a webhook and Prometheus when it loads the
rule, and neither runs here. So every PromQL expression in the rules and in the Grafana dashboard is
also checked here by a regex-based reading: each metric name it references must be one that
reconciler/metrics.py defines (with the `_total`/`_bucket`/`_sum`/`_count` suffix its type gives),
and each label in a selector must be one of that metric's labels. A PromQL syntax error that keeps
the names intact would pass.

Besides the manifests' objects, only the RBAC tests' RayClusters, ConfigMaps, Secrets and Events are
created: there is no kubelet and no controller, so no pod runs. The image itself is not built or run here.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kube_controlplane
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry
from target_kit import ENV, Kit, desired, load

from reconciler.commands import cli
from reconciler.errors import PermanentError
from reconciler.metrics import Metrics
from reconciler.model import ENVIRONMENT_LABEL, Action, LedgerSnapshot, Outcome
from reconciler.service import config
from reconciler.targets.kubernetes.target import KubernetesTarget
from tests.eventually import eventually

pytestmark = pytest.mark.kube

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"
NAMESPACE = "ray-gitops"
SERVICE_ACCOUNT = f"system:serviceaccount:{NAMESPACE}:ray-gitops"
KUBECTL_TIMEOUT_S = 60
PROMETHEUS_OPERATOR_VERSION = kube_controlplane.read_versions()["PROMETHEUS_OPERATOR_VERSION"]
MONITORING_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")

# RBAC. The docs' tables are the specification: "The Kubernetes target" (docs/targets.md) says what each
# identity may do (compared with the API server's answers), "Permissions" (docs/operations.md) lists every
# rule of each variant (compared with the rendered manifests). Only how the daemon's grants are scoped is
# spelled out here, as the docs' text says it: every namespace, except the Lease (the daemon's own
# namespace) and impersonation (onboarded tenant namespaces). The environment's service account may act
# in its own namespace only.
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IMPERSONATION_COMPONENT = MANIFESTS / "components" / "impersonation"
SHARDED_COMPONENT = MANIFESTS / "components" / "sharded"
TENANT_BASE = MANIFESTS / "tenant"
TENANT_SA_NAME = "ray-gitops-tenant"
TENANTS = ("team-a", "team-b")  # onboarded with manifests/tenant/
TARGET = "ray-prod"  # a namespace an environment may target that no tenant overlay onboarded
DAEMON_COLUMN = {"direct": "direct: the daemon", "impersonation": "impersonation: the daemon"}
TENANT_COLUMN = "impersonation: the environment's service account"
EVERYWHERE, OWN_NAMESPACE, ONBOARDED = "every namespace", "its own namespace", "each tenant namespace"
DAEMON_SCOPE = {("coordination.k8s.io", "leases"): NAMESPACE, ("", "serviceaccounts"): ONBOARDED}
PROBED_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "impersonate")
LEASE_NAME = "ray-gitops"
# Resources no identity may reach (subresources as "resource/subresource"), probed beside the README's.
NOT_GRANTED = [
    ("ray.io", "rayclusters/status"), ("ray.io", "rayjobs/status"), ("", "pods/log"), ("", "pods/exec"),
    ("", "services"), ("", "serviceaccounts"), ("", "persistentvolumeclaims"),
    ("", "namespaces"), ("", "nodes"), ("apps", "deployments"), ("batch", "jobs"),
    ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "rolebindings"), ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("coordination.k8s.io", "leases"),
    # what impersonation could reach beyond a service account: users, groups, uids, extra fields
    ("", "users"), ("", "groups"), ("authentication.k8s.io", "uids"), ("authentication.k8s.io", "userextras/scopes"),
]
Rule = tuple[str, str, str, str]  # (API group, resource, resource name or "*", verb)


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


def readme_table(heading: str, first_header: str) -> list[dict[str, str]]:
    """The rows (header -> cell) of the Markdown table in section `heading` (README.md or docs/*.md, the
    one file that has it) whose first column is `first_header`."""
    holders = [doc for doc in DOCS if f"\n## {heading}\n" in doc.read_text()]
    assert len(holders) == 1, f"section {heading!r} in {[doc.name for doc in holders]}: expected one file"
    section = holders[0].read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]
    header = cells(lines[start])
    assert set(cells(lines[start + 1])) == {"---"}, lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        assert len(cells(line)) == len(header), line
        rows.append(dict(zip(header, cells(line), strict=True)))
    assert rows, f"README {heading}: empty table"
    return rows


def readme_rules(resources: str, verbs: str) -> set[Rule]:
    """A README table's resources and verbs cells as rules: "`ray.io` rayclusters, rayjobs" and "get, list";
    `""` is the core group, a trailing `name` limits the row to that object, "–" is no verb."""
    match = re.fullmatch(r"`([^`]*)` ([a-z/]+(?:, [a-z/]+)*)(?: `([^`]+)`)?", resources)
    assert match, f"README resources cell {resources!r}"
    group = "" if match[1] == '""' else match[1]
    verb_list = [] if verbs == "–" else verbs.split(", ")
    assert set(verb_list) <= set(PROBED_VERBS), f"README verbs cell {verbs!r}"
    return {(group, resource, match[3] or "*", verb) for resource in match[2].split(", ") for verb in verb_list}


def identity_rules(column: str) -> set[tuple[str, Rule]]:
    """(scope, rule) of one identity in "The Kubernetes target" (scopes: see DAEMON_SCOPE)."""
    out = set()
    for row in readme_table("The Kubernetes target", "resources"):
        for rule in readme_rules(row["resources"], row[column]):
            scope = OWN_NAMESPACE if column == TENANT_COLUMN else DAEMON_SCOPE.get(rule[:2], EVERYWHERE)
            out.add((scope, rule))
    return out


def rules_in(rules: set[tuple[str, Rule]], namespace: str, own: str = "") -> set[Rule]:
    """The rules that hold in `namespace` ("": cluster-wide); `own` is the service account's namespace."""
    def holds(scope: str) -> bool:
        return (scope == EVERYWHERE or (scope == OWN_NAMESPACE and namespace == own)
                or (scope == ONBOARDED and namespace in TENANTS) or scope == namespace)
    return {rule for scope, rule in rules if holds(scope)}


def sa_user(namespace: str, name: str) -> tuple[str, list[str]]:
    """A service account's user name and the groups the API server gives it."""
    return (f"system:serviceaccount:{namespace}:{name}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"])


def may(authz: client.AuthorizationV1Api, user: tuple[str, list[str]], namespace: str, group: str, resource: str,
        verb: str, name: str = "") -> bool:
    """The RBAC authorizer's answer (SubjectAccessReview) for one request of `user`."""
    resource, _, subresource = resource.partition("/")
    review = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
        user=user[0], groups=user[1], resource_attributes=client.V1ResourceAttributes(
            namespace=namespace or None, group=group, resource=resource, subresource=subresource or None,
            verb=verb, name=name or None))))
    return bool(review.status.allowed)


def assert_may_do_exactly(authz: client.AuthorizationV1Api, user: tuple[str, list[str]],
                          expected: Callable[[str], set[Rule]], namespaces: tuple[str, ...]) -> None:
    """For every resource the README names or NOT_GRANTED lists, in each namespace, without a name, with
    each name the README names and with another name: the verbs allowed are exactly the expected ones."""
    everything = {rule for ns in namespaces for rule in expected(ns)}
    resources = sorted({(g, r) for g, r, _, _ in everything} | set(NOT_GRANTED))
    for namespace in namespaces:
        rules = expected(namespace)
        for group, resource in resources:
            names = {"", "another-name"} | {n for g, r, n, _ in everything if (g, r) == (group, resource) and n != "*"}
            for name in sorted(names):
                want = {v for g, r, n, v in rules if (g, r) == (group, resource) and n in ("*", name)}
                granted = {v for v in PROBED_VERBS if may(authz, user, namespace, group, resource, v, name)}
                assert granted == want, (f"{user[0]}: {group or 'core'}/{resource} {name or '(no name)'} in "
                                         f"{namespace or 'all namespaces'}")


def rules_review(plane: kube_controlplane.ControlPlane, user: str, namespace: str) -> set[Rule]:
    """SelfSubjectRulesReview while impersonating `user`: every rule that holds for it in `namespace`."""
    with plane.api_client() as api_client:
        api_client.set_default_header("Impersonate-User", user)
        review = client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
            client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace)))
    assert not review.status.incomplete, review.status.evaluation_error
    return {(group, resource, name, verb) for rule in review.status.resource_rules
            for group in rule.api_groups or [""] for resource in rule.resources or []
            for name in rule.resource_names or ["*"] for verb in rule.verbs}


def manifest_rules(role: dict[str, Any]) -> set[Rule]:
    """A Role's or ClusterRole's rules, one tuple per group, resource, name and verb."""
    return {(group, resource, name, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for name in rule.get("resourceNames") or ["*"] for verb in rule["verbs"]}


def token_client(plane: kube_controlplane.ControlPlane, namespace: str, name: str,
                 impersonate: str = "") -> client.ApiClient:
    """An ApiClient authenticated as the service account itself, by a token from the TokenRequest API (as
    the kubelet mounts one), optionally sending every request with `Impersonate-User: impersonate`."""
    with plane.api_client() as admin:
        token = client.CoreV1Api(admin).create_namespaced_service_account_token(
            name, namespace, {"spec": {"expirationSeconds": 600}}).status.token
    configuration = client.Configuration(host=plane.base_url)
    configuration.ssl_ca_cert = str(plane.ca_file)
    configuration.api_key = {"authorization": token}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api_client = client.ApiClient(configuration)
    if impersonate:
        api_client.set_default_header("Impersonate-User", impersonate)
    return api_client


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


@pytest.fixture(scope="module")
def overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The README's overlays: the impersonation and sharded variants over manifests/, and manifests/tenant/ per
    tenant."""
    root = tmp_path_factory.mktemp("overlays")
    out = {"direct": MANIFESTS}
    for name, kustomization in [
            ("impersonation", {"resources": [MANIFESTS], "components": [IMPERSONATION_COMPONENT]}),
            ("sharded", {"resources": [MANIFESTS], "components": [SHARDED_COMPONENT]}),
            *[(tenant, {"namespace": tenant, "resources": [TENANT_BASE]}) for tenant in TENANTS]]:
        (root / name).mkdir()
        relative = {k: [os.path.relpath(p, root / name) for p in v] if isinstance(v, list) else v
                    for k, v in kustomization.items()}
        (root / name / "kustomization.yaml").write_text(yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **relative}))
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def rendered_overlays(kubectl_path: Path, overlays: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """`kubectl kustomize` of each overlay."""
    out = {}
    for name, path in overlays.items():
        proc = run([str(kubectl_path), "kustomize", str(path)])
        assert proc.returncode == 0, f"{name}: {proc.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


@pytest.fixture(scope="module")
def tenants(applied: subprocess.CompletedProcess[str], kubectl: Any, overlays: dict[str, Path],
            kube_control_plane: kube_controlplane.ControlPlane) -> None:
    """TENANTS onboarded (their namespaces, then `kubectl apply -k` of their overlays), TARGET not."""
    with kube_control_plane.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        for namespace in (*TENANTS, TARGET):
            try:
                core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
            except ApiException as exc:
                assert exc.status == 409, exc
    for tenant in TENANTS:
        proc = kubectl("apply", "-k", str(overlays[tenant]))
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module", params=["direct", "impersonation"])
def variant(request: pytest.FixtureRequest, applied: subprocess.CompletedProcess[str], tenants: None,
            kubectl: Any, overlays: dict[str, Path], kube_control_plane: kube_controlplane.ControlPlane
            ) -> Iterator[str]:
    """The RBAC variant, installed as an operator switches: `kubectl apply -k` of its overlay over what is
    there (`applied` installed the base, i.e. direct). Afterwards the base is applied again and ClusterRole
    ray-gitops-impersonate deleted, as the README says to go back."""
    name = request.param
    with kube_control_plane.api_client() as api_client:
        authz = client.AuthorizationV1Api(api_client)

        def installed(impersonation: bool) -> bool:  # the authorizer's cache has caught up with the apply
            daemon = sa_user(NAMESPACE, "ray-gitops")
            return (may(authz, daemon, TARGET, "ray.io", "rayclusters", "patch") is not impersonation
                    and may(authz, daemon, TENANTS[0], "", "serviceaccounts", "impersonate", TENANT_SA_NAME)
                    is impersonation)
        if name == "impersonation":
            proc = kubectl("apply", "-k", str(overlays["impersonation"]))
            assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        eventually(lambda: installed(name == "impersonation"), 10, 0.1, f"{name}: the authorizer to see it")
        yield name
        if name == "impersonation":
            proc = kubectl("apply", "-k", str(MANIFESTS))
            assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
            kubectl("delete", "clusterrole", "ray-gitops-impersonate", "--ignore-not-found")
            eventually(lambda: installed(False), 10, 0.1, "the base applied again to be direct")


@pytest.fixture
def authz(api: client.ApiClient) -> client.AuthorizationV1Api:
    return client.AuthorizationV1Api(api)


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


def test_the_impersonation_overlay_and_a_tenant_overlay_render_what_the_readme_describes(
        rendered: list[dict[str, Any]], rendered_overlays: dict[str, list[dict[str, Any]]], kubectl_path: Path,
        tmp_path: Path) -> None:
    impersonation = rendered_overlays["impersonation"]
    assert sorted(kind_name(o) for o in impersonation if o["kind"] != "ConfigMap") == sorted(
        [kind_name(o) for o in rendered if o["kind"] != "ConfigMap"] + [("ClusterRole", "ray-gitops-impersonate")])
    assert container_env(impersonation)["RAY_GITOPS_DEFAULT_SERVICE_ACCOUNT"] == TENANT_SA_NAME
    assert "RAY_GITOPS_DEFAULT_SERVICE_ACCOUNT" not in container_env(rendered)
    config_name = container(impersonation)["envFrom"][0]["configMapRef"]["name"]
    assert config_name != container(rendered)["envFrom"][0]["configMapRef"]["name"]  # a new hash: the pod rolls
    [impersonate] = one(impersonation, "ClusterRole", "ray-gitops-impersonate")["rules"]
    assert impersonate["resourceNames"] == [TENANT_SA_NAME]

    tenant = rendered_overlays[TENANTS[0]]
    assert sorted(kind_name(o) for o in tenant) == [
        ("Role", TENANT_SA_NAME), ("RoleBinding", "ray-gitops-impersonate"), ("RoleBinding", TENANT_SA_NAME),
        ("ServiceAccount", TENANT_SA_NAME)]
    assert {o["metadata"]["namespace"] for o in tenant} == {TENANTS[0]}
    assert one(tenant, "ServiceAccount")["automountServiceAccountToken"] is False
    assert one(tenant, "RoleBinding", TENANT_SA_NAME)["subjects"] == [
        {"kind": "ServiceAccount", "name": TENANT_SA_NAME, "namespace": TENANTS[0]}]

    # docs/operations.md "Impersonation": the component in the overlay that also sets the repository
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS, tmp_path)],
        "components": [os.path.relpath(IMPERSONATION_COMPONENT, tmp_path)],
        "configMapGenerator": [{"name": "ray-gitops-config", "behavior": "merge",
                                "literals": ["RAY_GITOPS_REPO=git@github.com:acme/ray-config.git"]}],
    }))
    proc = run([str(kubectl_path), "kustomize", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    env = container_env([doc for doc in yaml.safe_load_all(proc.stdout) if doc])
    assert (env["RAY_GITOPS_REPO"], env["RAY_GITOPS_DEFAULT_SERVICE_ACCOUNT"]) == (
        "git@github.com:acme/ray-config.git", TENANT_SA_NAME)


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


# -- RBAC: each variant, on the real API server's authorizer ----------------------------------------------
def test_the_service_account_may_do_exactly_what_the_readme_lists_and_nothing_else(
        variant: str, authz: client.AuthorizationV1Api) -> None:
    """The daemon's ServiceAccount, asked of the RBAC authorizer (SubjectAccessReview) per resource, verb and
    name: a namespace an environment targets, the daemon's own, an onboarded tenant's, and cluster-wide."""
    rules = identity_rules(DAEMON_COLUMN[variant])
    assert_may_do_exactly(authz, sa_user(NAMESPACE, "ray-gitops"), lambda ns: rules_in(rules, ns),
                          (TARGET, NAMESPACE, TENANTS[0], ""))
    leases = {rule for _, rule in rules if rule[:2] == ("coordination.k8s.io", "leases")}
    assert {(name, verb) for _, _, name, verb in leases} == {("*", "create"), (LEASE_NAME, "get"),
                                                           (LEASE_NAME, "update")}
    assert config.Settings().leader_election_id == LEASE_NAME  # the daemon's default Lease name


def test_the_authorizer_lists_no_rule_for_the_service_account_beyond_the_readme(
        variant: str, kube_control_plane: kube_controlplane.ControlPlane) -> None:
    """SelfSubjectRulesReview as the ServiceAccount, minus what any ServiceAccount gets (discovery)."""
    rules = identity_rules(DAEMON_COLUMN[variant])
    for namespace in (TARGET, NAMESPACE, TENANTS[0]):
        baseline = rules_review(kube_control_plane, sa_user(NAMESPACE, "someone-else")[0], namespace)
        assert rules_review(kube_control_plane, SERVICE_ACCOUNT, namespace) - baseline == rules_in(rules, namespace), (
            f"{variant} in {namespace}")


@pytest.mark.parametrize("variant", ["impersonation"], indirect=True)
def test_with_impersonation_the_daemon_writes_nothing_itself_and_may_act_only_as_onboarded_tenants(
        variant: str, authz: client.AuthorizationV1Api) -> None:
    daemon = sa_user(NAMESPACE, "ray-gitops")
    for namespace in (TARGET, TENANTS[0], NAMESPACE, ""):
        for group, resource in [("ray.io", "rayclusters"), ("ray.io", "rayjobs"), ("ray.io", "rayservices"),
                                ("", "configmaps"), ("", "secrets"), ("", "events")]:
            for verb in ("create", "patch", "update", "delete"):
                assert not may(authz, daemon, namespace, group, resource, verb), (verb, resource, namespace)
    for tenant in TENANTS:
        assert may(authz, daemon, tenant, "", "serviceaccounts", "impersonate", TENANT_SA_NAME)
        assert not may(authz, daemon, tenant, "", "serviceaccounts", "impersonate", "default")
    for namespace in (TARGET, NAMESPACE, "kube-system", ""):  # not onboarded
        assert not may(authz, daemon, namespace, "", "serviceaccounts", "impersonate", TENANT_SA_NAME), namespace
    for group, resource, name in [("", "users", "admin"), ("", "groups", "system:masters"),
                                  ("authentication.k8s.io", "uids", "x"),
                                  ("authentication.k8s.io", "userextras/scopes", "x")]:
        assert not may(authz, daemon, "", group, resource, "impersonate", name), resource


@pytest.mark.parametrize("variant", ["impersonation"], indirect=True)
def test_the_tenant_service_account_may_write_what_the_readme_lists_in_its_own_namespace_only(
        variant: str, authz: client.AuthorizationV1Api, kube_control_plane: kube_controlplane.ControlPlane) -> None:
    rules = identity_rules(TENANT_COLUMN)
    own = TENANTS[0]
    tenant = sa_user(own, TENANT_SA_NAME)
    assert_may_do_exactly(authz, tenant, lambda ns: rules_in(rules, ns, own), (own, TENANTS[1], TARGET, NAMESPACE, ""))
    for namespace in (own, TENANTS[1]):
        baseline = rules_review(kube_control_plane, sa_user(own, "someone-else")[0], namespace)
        assert rules_review(kube_control_plane, tenant[0], namespace) - baseline == rules_in(rules, namespace, own)
    assert rules_in(rules, own, own) and not rules_in(rules, TENANTS[1], own)


@pytest.mark.parametrize("variant", ["impersonation"], indirect=True)
def test_the_daemon_writes_as_an_onboarded_tenant_through_the_api_server_and_nowhere_else(
        variant: str, kube_control_plane: kube_controlplane.ControlPlane) -> None:
    """Real requests with the daemon's own token (TokenRequest, as in its pod) and `Impersonate-User`, the
    way the daemon sends an environment's writes: what SubjectAccessReview says, the API server does."""
    own, other = TENANTS
    tenant = sa_user(own, TENANT_SA_NAME)[0]
    clients: list[client.ApiClient] = []

    def as_daemon(impersonate: str = "", group: str = "") -> tuple[client.CustomObjectsApi, client.CoreV1Api]:
        api_client = token_client(kube_control_plane, NAMESPACE, "ray-gitops", impersonate)
        if group:
            api_client.set_default_header("Impersonate-Group", group)
        clients.append(api_client)
        return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)

    def cluster(namespace: str) -> dict[str, Any]:
        return desired(load("raycluster.yaml"), namespace).manifest

    def apply(custom: client.CustomObjectsApi, namespace: str, dry_run: bool = False) -> dict[str, Any]:
        response = custom.patch_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayclusters", "demo", cluster(namespace), field_manager="ray-gitops",
            force=False, _content_type="application/apply-patch+yaml", _preload_content=False,
            **({"dry_run": "All"} if dry_run else {}))
        stored: dict[str, Any] = json.loads(response.data)
        return stored

    def refused(call: Callable[[], Any], message: str) -> None:
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 403 and message in json.loads(exc.value.body)["message"], exc.value.body

    try:
        custom, core = as_daemon()
        refused(lambda: apply(custom, own), 'User "system:serviceaccount:ray-gitops:ray-gitops" cannot patch')

        custom, core = as_daemon(tenant)
        assert apply(custom, own, dry_run=True)["metadata"]["namespace"] == own
        created = apply(custom, own)
        assert apply(custom, own, dry_run=True)["metadata"]["uid"] == created["metadata"]["uid"]
        assert custom.get_namespaced_custom_object("ray.io", "v1", own, "rayclusters", "demo")
        core.create_namespaced_event(own, {
            "metadata": {"name": "demo.ray-gitops-test"}, "reason": "Created", "message": "from the test",
            "involvedObject": {"apiVersion": "ray.io/v1", "kind": "RayCluster", "namespace": own, "name": "demo"}})
        ledger = core.create_namespaced_config_map(own, {"metadata": {"name": "ray-gitops-ledger-e2e"},
                                                         "data": {"inventory": "[]"}})
        ledger.data = {"inventory": "[1]"}
        core.replace_namespaced_config_map(ledger.metadata.name, own, ledger)  # PUT with its resourceVersion
        refused(lambda: apply(custom, other), f'User "{tenant}" cannot patch resource "rayclusters"')
        refused(lambda: core.list_namespaced_config_map(own), f'User "{tenant}" cannot list')

        daemon_custom, _ = as_daemon()  # the caches: the daemon's own list, cluster-wide, label-filtered
        listed = daemon_custom.list_cluster_custom_object("ray.io", "v1", "rayclusters",
                                                          label_selector="app.kubernetes.io/managed-by=ray-gitops")
        assert (own, "demo") in [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in listed["items"]]

        custom, core = as_daemon(sa_user(other, TENANT_SA_NAME)[0])  # the second tenant, in its namespace
        apply(custom, other)
        custom.delete_namespaced_custom_object("ray.io", "v1", other, "rayclusters", "demo")

        for user, group in [(sa_user(TARGET, TENANT_SA_NAME)[0], ""), (sa_user(own, "default")[0], ""),
                            ("admin", ""), (tenant, "system:masters")]:
            custom, _ = as_daemon(user, group)
            refused(lambda custom=custom: apply(custom, own), "cannot impersonate resource")

        custom, _ = as_daemon(tenant)
        custom.delete_namespaced_custom_object("ray.io", "v1", own, "rayclusters", "demo")
    finally:
        for api_client in clients:
            api_client.close()


def reconcile_each_request_kind(kit: Kit, plane: kube_controlplane.ControlPlane) -> None:
    """Through `kit`'s KubernetesTarget, as reconciles send them: the caches, dry-run and apply of new and
    existing objects, Events, the ledger's POST and PUT, recreate and prune of a RayCluster, a ConfigMap
    and a Secret. Each must succeed, and show on the cluster as the admin sees it."""
    namespace = kit.namespace
    objects = [desired(load(name), namespace) for name in ("raycluster.yaml", "configmap.yaml", "secret.yaml")]
    admin = Kit(plane, namespace)
    try:
        for obj in objects:
            item, outcome = kit.sync(obj)
            assert outcome == Outcome.CREATED, obj.ref
            kit.target.report_event(item, outcome, "created by the test", kit.context)
        changed = desired({**load("configmap.yaml"), "data": {"mode": "slow"}}, namespace, revision="r2")
        item, outcome = kit.sync(changed)
        assert outcome == Outcome.CONFIGURED and (admin.get("ConfigMap", "settings") or {})["data"] == {"mode": "slow"}

        spec = kit.environment().spec
        for runs in ((("run-1", ""),), (("run-1", "SUCCEEDED"),)):  # the first save POSTs, the second PUTs
            kit.target.save_ledger(spec, LedgerSnapshot(frozenset(o.ref for o in objects), runs))
        ledger = admin.core.read_namespaced_config_map(f"ray-gitops-ledger-{ENV}", namespace)
        assert json.loads(ledger.data["runs"]) == {"run-1": "SUCCEEDED"}

        assert kit.apply(objects[0], Action.RECREATE) == Outcome.RECREATED
        for obj in objects:
            assert kit.apply(None, Action.DELETE, obj.ref) == Outcome.DELETED
            assert admin.get(obj.ref.kind, obj.ref.name) is None
        assert kit.target.recorder.flush(30)
        events = admin.core.list_namespaced_event(namespace, label_selector=f"{ENVIRONMENT_LABEL}={ENV}").items
        assert sorted((e.reason, e.involved_object.kind) for e in events) == [  # emit() only logs a refusal
            ("Created", "ConfigMap"), ("Created", "RayCluster"), ("Created", "Secret")]
        assert kit.requests("create") == 1 + 3 and kit.requests("update") == 1  # ledger POST, Events; ledger PUT
    finally:  # leave no labelled object to later tests' cluster-wide caches
        for obj in objects:
            admin.apply(None, Action.DELETE, obj.ref)
        admin.core.delete_collection_namespaced_config_map(namespace, label_selector=f"{ENVIRONMENT_LABEL}={ENV}")
        admin.close()


@pytest.mark.parametrize("variant", ["direct"], indirect=True)
def test_the_kubernetes_target_reconciles_with_the_direct_variants_rights_alone(
        variant: str, kube_control_plane: kube_controlplane.ControlPlane, kube_namespace: str) -> None:
    """The daemon's own code (KubernetesTarget), authenticated as the ServiceAccount by its own token, in a
    namespace nobody onboarded: every request kind it sends is allowed by the direct variant, which grants
    nothing more (the tests above)."""
    sa_client = token_client(kube_control_plane, NAMESPACE, "ray-gitops")
    kit = Kit(SimpleNamespace(api_client=lambda: sa_client), kube_namespace)
    try:
        assert kit.target.writer(kit.options).kube.impersonate == ""
        reconcile_each_request_kind(kit, kube_control_plane)
    finally:
        kit.close()


@pytest.mark.parametrize("variant", ["impersonation"], indirect=True)
def test_the_kubernetes_target_writes_as_the_tenant_and_reads_as_itself_with_the_impersonation_variant(
        variant: str, kube_control_plane: kube_controlplane.ControlPlane,
        rendered_overlays: dict[str, list[dict[str, Any]]]) -> None:
    """The daemon's own code with its own token and the impersonation component's setting
    (default_service_account): in an onboarded namespace every request kind succeeds, the writes as the
    tenant's account (the daemon may write nothing itself, tests above) and the caches as the daemon (the
    tenant may not list); in a namespace nobody onboarded the first write is refused and nothing is written."""
    env = container_env(rendered_overlays["impersonation"])
    settings = config.load({}, environ={k: v for k, v in env.items() if k.startswith("RAY_GITOPS_")})
    assert settings.default_service_account == TENANT_SA_NAME
    sa_client = token_client(kube_control_plane, NAMESPACE, "ray-gitops")
    kits = []
    try:
        for namespace in (TENANTS[1], TARGET):
            kit = Kit(SimpleNamespace(api_client=lambda: sa_client), namespace)
            kits.append(kit)
            kit.target.close(workloads=False)
            kit.target = KubernetesTarget(kit.options, kit.metrics, api_client=sa_client,
                                          default_service_account=settings.default_service_account)
            assert kit.target.writer(kit.options).kube.impersonate == sa_user(namespace, TENANT_SA_NAME)[0]
        onboarded, not_onboarded = kits
        reconcile_each_request_kind(onboarded, kube_control_plane)

        obj = desired(load("configmap.yaml"), TARGET)
        with pytest.raises(PermanentError, match=f'cannot impersonate resource "serviceaccounts".* "{TARGET}"'):
            not_onboarded.sync(obj)
        with kube_control_plane.api_client() as api_client, pytest.raises(ApiException) as missing:
            client.CoreV1Api(api_client).read_namespaced_config_map("settings", TARGET)
        assert missing.value.status == 404
    finally:
        for kit in kits:
            kit.close()


# -- RBAC: the docs' "Permissions" table is what the manifests hold -----------------------------------------
def test_the_readme_permissions_table_is_every_rule_of_each_variant_and_whom_it_is_granted_to(
        rendered_overlays: dict[str, list[dict[str, Any]]]) -> None:
    rows = readme_table("Deploying to a cluster", "variant")
    renders = {"direct": rendered_overlays["direct"],
               "impersonation": rendered_overlays["impersonation"] + rendered_overlays[TENANTS[0]],
               "sharded": rendered_overlays["sharded"]}
    for variant, objects in renders.items():
        table: dict[tuple[str, str], set[Rule]] = {}
        grantee: dict[tuple[str, str], str] = {}
        for row in rows:  # the sharded variant is the direct one with sharding on
            if row["variant"] in ("both", variant, *(("direct",) if variant == "sharded" else ())):
                kind, name = re.fullmatch(r"(Role|ClusterRole) `([^`]+)`", row["object"]).groups()
                table.setdefault((kind, name), set()).update(readme_rules(row["resources"], row["verbs"]))
                assert grantee.setdefault((kind, name), row["granted to, where"]) == row["granted to, where"]
        roles = {kind_name(o): manifest_rules(o) for o in objects if o["kind"] in ("Role", "ClusterRole")}
        assert roles == table, variant

        for (kind, name), where in grantee.items():  # who holds each role, and with which kind of binding
            bindings = [o for o in objects if o["kind"].endswith("Binding") and o["roleRef"]["name"] == name
                        and o["roleRef"]["kind"] == kind]
            holders = {(b["kind"], b["metadata"].get("namespace"), s["namespace"], s["name"])
                       for b in bindings for s in b["subjects"]}
            expected = {
                "the daemon, every namespace": {("ClusterRoleBinding", None, NAMESPACE, "ray-gitops")},
                f"the daemon, in `{NAMESPACE}`": {("RoleBinding", NAMESPACE, NAMESPACE, "ray-gitops")},
                "the daemon, each tenant namespace": {("RoleBinding", TENANTS[0], NAMESPACE, "ray-gitops")},
                f"`{TENANT_SA_NAME}`, its own namespace": {("RoleBinding", TENANTS[0], TENANTS[0], TENANT_SA_NAME)},
            }[where]
            assert holders == expected, (variant, kind, name)


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
    key = volumes[mounts["/etc/ray-gitops/installation"]["name"]]["secret"]  # outlives the emptyDir state
    assert key["secretName"] == "ray-gitops-installation-key" and key["optional"] is False
    assert env["RAY_GITOPS_INSTALLATION_KEY_FILE"] == "/etc/ray-gitops/installation/key"


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


def test_the_sharded_variant_runs_three_replicas_that_split_the_environments_among_12_shards(
        rendered_overlays: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered_overlays["sharded"]
    c = container(objects)
    env = container_env(objects)
    settings = config.load(vars(cli.parser().parse_args(c["args"])),
                           environ={k: v for k, v in env.items() if k.startswith("RAY_GITOPS_")})
    assert (settings.shards, settings.leader_election) == (12, False)
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert container(rendered_overlays["direct"])["args"] == ["run", "--leader-election", "--log-format", "json"]
    direct, sharded = ({kind_name(o): o for o in rendered_overlays[v]} for v in ("direct", "sharded"))
    assert set(sharded) - set(direct) == {("Role", "ray-gitops-shards"), ("RoleBinding", "ray-gitops-shards")}
    assert [k for k in direct if direct[k] != sharded.get(k)] == [("Deployment", "ray-gitops")]


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
