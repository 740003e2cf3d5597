"""`spec.target.kubernetes` of an environment, parsed and checked here, by the target itself; and the
clusters of the daemon's settings it may name.

Cluster access is the daemon's, not Git's: an environment names a cluster (`cluster: prod`); what that
name connects to (a kubeconfig and context, or in-cluster), and which environments may use it with which
namespaces and service accounts, are the daemon's settings (`Cluster`). No path from Git is opened.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...model import parse_duration
from ...pipeline.target import Checker, dns_label, short

DEFAULT_CLUSTER = "default"
PROTECTED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
MIGRATED = ("context", "kubeconfig", "inCluster")  # fields of 0.1 environments: now the daemon's settings


@dataclass(frozen=True)
class Cluster:
    """A cluster the daemon may connect to, from its settings: the credentials (a kubeconfig file and context,
    or the pod's service account), and shell-style patterns of the environments that may use it, the namespaces
    they may name and the service accounts they may act as. A protected namespace (PROTECTED_NAMESPACES, the
    daemon's own) must be listed by its exact name."""

    name: str
    kubeconfig: str = ""
    context: str = ""
    in_cluster: bool = False
    environments: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)
    service_accounts: tuple[str, ...] = ("*",)

    def refusal(self, environment: str, namespaces: frozenset[str], account: str, protected: frozenset[str]) -> str:
        """Why `environment` may not use this cluster with these namespaces and service account ("" if it may)."""
        if not _matches(environment, self.environments):
            return (f"environment {environment} may not use cluster {self.name} (the daemon allows "
                    f"{_list(self.environments)})")
        for namespace in sorted(namespaces):
            if namespace in protected and namespace not in self.namespaces:
                return (f"namespace {namespace} is protected ({', '.join(sorted(protected))}): the daemon's settings "
                        f"must list it by name for cluster {self.name}")
            if not _matches(namespace, self.namespaces):
                return (f"namespace {namespace} is not allowed on cluster {self.name} (allowed: "
                        f"{_list(self.namespaces)})")
        if account and not _matches(account, self.service_accounts):
            return (f"service account {account} is not allowed on cluster {self.name} (allowed: "
                    f"{_list(self.service_accounts)})")
        return ""


def _matches(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _list(patterns: tuple[str, ...]) -> str:
    return ", ".join(patterns) or "none"


@dataclass(frozen=True)
class KubernetesOptions:
    """Which cluster of the daemon's settings, the namespaces and service account, and how to apply to it."""

    namespace: str  # required: objects without a namespace go here
    cluster: str = DEFAULT_CLUSTER  # a cluster of the daemon's settings
    force: bool = False  # with self_heal false: take over fields another field manager owns
    delete_timeout: float = 60.0  # seconds to wait for a delete before re-creating
    others: frozenset[str] = frozenset()  # `namespaces`: more namespaces the environment may write to
    service_account: str = ""  # every write impersonates system:serviceaccount:<namespace>:<this>
    self_heal: bool = True  # a field Git sets that another manager changed is set back (taking it over)

    @property
    def namespaces(self) -> frozenset[str]:
        return self.others | {self.namespace}

    def connection(self) -> tuple[Any, ...]:
        return (self.cluster,)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], c: Checker, path: str) -> KubernetesOptions | None:
        c.known_keys({k: v for k, v in raw.items() if k not in MIGRATED}, path,
                     {"namespace", "namespaces", "cluster", "force", "deleteTimeout", "serviceAccountName", "selfHeal"})
        for key in MIGRATED:
            if key in raw:
                c.fail(f"{path}.{key}", "Git may not name the daemon's credentials (a file, a context or its own "
                       "service account): name a cluster of the daemon's settings instead, `cluster: <name>` (see the "
                       "README, \"Clusters\"; environments without it use the cluster `default`)")
        namespace = c.string(raw.get("namespace"), f"{path}.namespace", required=True)
        others: list[str] = []
        for i, other in enumerate([namespace, *c.sequence(raw.get("namespaces"), f"{path}.namespaces")]):
            field = f"{path}.namespace" if i == 0 else f"{path}.namespaces[{i - 1}]"
            if i == 0 and other is None:
                continue  # required: `c.string` said so
            if not isinstance(other, str) or not dns_label(other):  # an empty entry too (it was let through)
                c.fail(field, f"must be a DNS-1123 label (a-z, 0-9, '-'), got {short(other)}")
            elif i:
                others.append(other)
        account = c.string(raw.get("serviceAccountName"), f"{path}.serviceAccountName")
        if account is not None and not dns_label(account):
            c.fail(f"{path}.serviceAccountName", f"must be a DNS-1123 label, got {short(account)}")
        cluster = c.string(raw.get("cluster"), f"{path}.cluster")
        if cluster is not None and not dns_label(cluster):
            c.fail(f"{path}.cluster", f"must be the name of a cluster of the daemon's settings, got {short(cluster)}")
        for flag in ("force", "selfHeal"):
            c.boolean(raw.get(flag), f"{path}.{flag}")
        timeout = 60.0
        try:
            timeout = parse_duration(raw.get("deleteTimeout", 60))
        except ValueError as exc:
            c.fail(f"{path}.deleteTimeout", str(exc))
        if namespace is None or not dns_label(namespace):
            return None
        return cls(namespace, cluster or DEFAULT_CLUSTER, raw.get("force") is True, timeout, frozenset(others),
                   account or "", raw.get("selfHeal", True) is not False)


def admit(options: KubernetesOptions, environment: str, clusters: Mapping[str, Cluster] | None,
          protected: frozenset[str], c: Checker, path: str) -> None:
    """The daemon's settings decide whether `environment` may use its cluster with its namespaces and service
    account (`clusters` None: not known here, as in `validate PATH`: only the protected namespaces are checked)."""
    if clusters is None:
        cluster = Cluster(options.cluster)
    elif options.cluster not in clusters:
        c.fail(f"{path}.cluster", f"no cluster {options.cluster} in the daemon's settings (known: "
               f"{', '.join(sorted(clusters)) or 'none'})")
        return
    else:
        cluster = clusters[options.cluster]
    refusal = cluster.refusal(environment, options.namespaces, options.service_account, protected)
    if refusal:
        c.fail(path, refusal)
