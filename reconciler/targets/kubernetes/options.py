"""`spec.target.kubernetes` of an environment: parsed and checked here, by the target itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ...model import parse_duration
from ...pipeline.validate import Checker, dns_label, short

KINDS = frozenset({"RayCluster", "RayJob", "RayService", "RayCronJob", "ConfigMap", "Secret"})


@dataclass(frozen=True)
class KubernetesOptions:
    """A cluster connection (kubeconfig and context, or in-cluster) and how to apply to it."""

    namespace: str  # required: objects without a namespace go here
    context: str = ""
    kubeconfig: str = ""
    in_cluster: bool = False
    force: bool = False  # with self_heal false: take over fields another field manager owns
    delete_timeout: float = 60.0  # seconds to wait for a delete before re-creating
    others: frozenset[str] = frozenset()  # `namespaces`: more namespaces the environment may write to
    service_account: str = ""  # every write impersonates system:serviceaccount:<namespace>:<this>
    self_heal: bool = True  # a field Git sets that another manager changed is set back (taking it over)

    @property
    def namespaces(self) -> frozenset[str]:
        return self.others | {self.namespace}

    def connection(self) -> tuple[Any, ...]:
        return (self.kubeconfig, self.context, self.in_cluster)

    @classmethod
    def parse(cls, raw: Mapping[str, Any], c: Checker, path: str) -> KubernetesOptions | None:
        c.known_keys(raw, path, {"namespace", "namespaces", "context", "kubeconfig", "inCluster", "force",
                                 "deleteTimeout", "serviceAccountName", "selfHeal"})
        namespace = c.string(raw.get("namespace"), f"{path}.namespace", required=True)
        others = []
        for i, other in enumerate([namespace, *c.sequence(raw.get("namespaces"), f"{path}.namespaces")]):
            field = f"{path}.namespace" if i == 0 else f"{path}.namespaces[{i - 1}]"
            if other is not None and (not isinstance(other, str) or not dns_label(other)):
                c.fail(field, f"must be a DNS-1123 label (a-z, 0-9, '-'), got {short(other)}")
            elif i:
                others.append(other)
        account = c.string(raw.get("serviceAccountName"), f"{path}.serviceAccountName")
        if account is not None and not dns_label(account):
            c.fail(f"{path}.serviceAccountName", f"must be a DNS-1123 label, got {short(account)}")
        context = c.string(raw.get("context"), f"{path}.context")
        kubeconfig = c.string(raw.get("kubeconfig"), f"{path}.kubeconfig")
        for flag in ("inCluster", "force", "selfHeal"):
            c.boolean(raw.get(flag), f"{path}.{flag}")
        if raw.get("inCluster") and context:
            c.fail(path, "set either inCluster: true or context, not both")
        timeout = 60.0
        try:
            timeout = parse_duration(raw.get("deleteTimeout", 60))
        except ValueError as exc:
            c.fail(f"{path}.deleteTimeout", str(exc))
        if namespace is None or not dns_label(namespace):
            return None
        return cls(namespace, context or "", kubeconfig or "", raw.get("inCluster") is True, raw.get("force") is True,
                   timeout, frozenset(others), account or "", raw.get("selfHeal", True) is not False)
