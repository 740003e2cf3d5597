"""The environment's ledger on the cluster: ConfigMap `ray-gitops-ledger-<env>` in its namespace.

Used by `KubernetesTarget.load_ledger/save_ledger`, so a daemon with an empty state dir, or a new
leader, knows the inventory it may prune and the RayJob runs it must never re-run. Writes carry
the resourceVersion read last; on a conflict the newer copy is re-read and merged, never lost.
"""
from __future__ import annotations

import json
from typing import Callable

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ...model import MANAGED_BY_LABEL, MANAGED_BY_VALUE, ENVIRONMENT_LABEL, LedgerSnapshot, ObjectRef

MAX_RUNS = 500  # newest runs kept; a ConfigMap holds at most 1 MiB


class ConfigMapLedger:
    """Read and write one environment's ledger ConfigMap with optimistic concurrency."""

    def __init__(self, core: client.CoreV1Api, namespace: str, environment: str,
                 count: Callable[[str], None] = lambda verb: None) -> None:
        self.core, self.namespace, self.environment, self.count = core, namespace, environment, count
        self.name = f"ray-gitops-ledger-{environment}"
        self._version: str | None = None

    def load(self) -> LedgerSnapshot | None:
        """The stored snapshot, or None when there is none yet."""
        self.count("get")
        try:
            cm = self.core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        self._version = cm.metadata.resource_version
        data = cm.data or {}
        inventory = frozenset(ObjectRef(*ref) for ref in json.loads(data.get("inventory", "[]")))
        runs = tuple(sorted(json.loads(data.get("runs", "{}")).items()))
        return LedgerSnapshot(inventory, runs)

    def save(self, snapshot: LedgerSnapshot) -> None:
        """Write `snapshot`; if someone wrote in between, keep their finished runs too."""
        for _ in range(3):
            body = self._body(snapshot)
            try:
                if self._version is None:
                    self.count("create")
                    created = self.core.create_namespaced_config_map(self.namespace, body)
                    self._version = created.metadata.resource_version
                else:
                    body.metadata.resource_version = self._version
                    self.count("update")
                    replaced = self.core.replace_namespaced_config_map(self.name, self.namespace, body)
                    self._version = replaced.metadata.resource_version
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                theirs = self.load()
                if theirs is not None:
                    runs = dict(theirs.runs)
                    runs.update({run: result for run, result in snapshot.runs if result or run not in runs})
                    snapshot = LedgerSnapshot(snapshot.inventory, tuple(sorted(runs.items())))
        raise RuntimeError(f"ConfigMap/{self.namespace}/{self.name}: conflicting writes, gave up after 3 tries")

    def _body(self, snapshot: LedgerSnapshot) -> client.V1ConfigMap:
        runs = dict(sorted(snapshot.runs)[-MAX_RUNS:])
        inventory = sorted([r.group, r.kind, r.namespace, r.name] for r in snapshot.inventory)
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: self.environment}
        return client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace, labels=labels),
            data={"inventory": json.dumps(inventory), "runs": json.dumps(runs, sort_keys=True)})
