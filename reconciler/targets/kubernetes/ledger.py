"""The environment's ledger on the cluster: ConfigMap `ray-gitops-ledger-<env>` in its namespace.

Used by `KubernetesTarget.load_ledger/save_ledger`, so a daemon with an empty state dir, or a new
leader, knows the inventory it may prune and the RayJob runs it must never re-run. The first read
comes from the target's ConfigMap cache (one LIST for every environment, not a GET each). Writes
go through `Kube` and carry the resourceVersion read last; on a conflict the newer copy is read
again and merged, never lost.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from ...errors import TemporaryError
from ...kubeapi import RESOURCES, ApiError, Kube
from ...model import ENVIRONMENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, LedgerSnapshot, Manifest, ObjectRef

MAX_RUNS = 500  # newest runs kept; a ConfigMap holds at most 1 MiB
Reader = Callable[[], Manifest | None]


LEDGER_PREFIX = "ray-gitops-ledger-"


def ledger_name(environment: str) -> str:
    return f"{LEDGER_PREFIX}{environment}"


class ConfigMapLedger:
    """Read and write one environment's ledger ConfigMap with optimistic concurrency."""

    def __init__(self, kube: Kube, namespace: str, environment: str, read: Reader | None = None) -> None:
        self.kube, self.namespace, self.environment = kube, namespace, environment
        self.name = ledger_name(environment)
        self.path = RESOURCES["ConfigMap"].item(namespace, self.name)
        self._read = read or self._get
        self._version: str | None = None

    def _get(self) -> Manifest | None:
        return self.kube.get(self.path)

    def load(self) -> LedgerSnapshot | None:
        """The stored snapshot, or None when there is none yet."""
        return self._parse(self._read())

    def _parse(self, cm: Manifest | None) -> LedgerSnapshot | None:
        if cm is None:
            return None
        self._version = cm["metadata"]["resourceVersion"]
        data = cm.get("data") or {}
        inventory = frozenset(ObjectRef(*ref) for ref in json.loads(data.get("inventory", "[]")))
        runs = tuple(sorted(json.loads(data.get("runs", "{}")).items()))
        return LedgerSnapshot(inventory, runs)

    def save(self, snapshot: LedgerSnapshot) -> None:
        """Write `snapshot`; if someone wrote in between, keep their finished runs too."""
        for _ in range(3):
            body = self._body(snapshot)
            try:
                if self._version is None:
                    stored = self.kube.request("create", "POST", RESOURCES["ConfigMap"].collection(self.namespace),
                                               body=body)
                else:
                    body["metadata"]["resourceVersion"] = self._version
                    stored = self.kube.request("update", "PUT", self.path, body=body)
                self._version = stored["metadata"]["resourceVersion"]
                return
            except ApiError as exc:
                if exc.status != 409:
                    raise
                theirs = self._parse(self._get())
                if theirs is not None:
                    runs = dict(theirs.runs)
                    runs.update({run: result for run, result in snapshot.runs if result or run not in runs})
                    snapshot = LedgerSnapshot(snapshot.inventory, tuple(sorted(runs.items())))
        raise TemporaryError(f"ConfigMap/{self.namespace}/{self.name}: conflicting writes, gave up after 3 tries")

    def delete(self) -> None:
        """Delete the ConfigMap (its environment left Git); gone already is fine."""
        self.kube.delete(self.path)
        self._version = None

    def _body(self, snapshot: LedgerSnapshot) -> dict[str, Any]:
        runs = dict(sorted(snapshot.runs)[-MAX_RUNS:])
        inventory = sorted([r.group, r.kind, r.namespace, r.name] for r in snapshot.inventory)
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: self.environment}
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels},
                "data": {"inventory": json.dumps(inventory), "runs": json.dumps(runs, sort_keys=True)}}
