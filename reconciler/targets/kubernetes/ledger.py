"""The environment's ledger on the cluster: ConfigMap `ray-gitops-ledger-<env>` in its namespace.

Used by `KubernetesTarget.load_ledger/save_ledger`, so a daemon with an empty state dir, or a new
leader, knows the inventory it may prune and the RayJob runs it must never re-run. A tenant can write
ConfigMaps in its namespace, so the data is signed (HMAC-SHA256) with the installation's ledger key,
which tenants cannot read; a copy without a valid signature is reported and ignored. The first read
comes from the target's ConfigMap cache (one LIST for every environment, not a GET each). Writes
go through `Kube` and carry the resourceVersion read last; on a conflict the newer copy is read
again and merged, never lost.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from ...errors import PermanentError, TemporaryError
from ...kubeapi import RESOURCES, ApiError, Kube
from ...model import (
    ENVIRONMENT_LABEL,
    LEDGER_PREFIX,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    LedgerSnapshot,
    Manifest,
    ObjectRef,
)

MAX_RUNS = 500  # newest runs kept; a ConfigMap holds at most 1 MiB
Reader = Callable[[], Manifest | None]


def ledger_name(environment: str) -> str:
    return f"{LEDGER_PREFIX}{environment}"


SIGNED = ("inventory", "runs", "verified")  # the keys of `data` the signature covers


class Unverifiable(PermanentError):
    """A ledger ConfigMap without a valid signature of this installation's key: forged (a tenant can write
    ConfigMaps in its namespace) or written with another key. Reported and ignored, never obeyed."""


def signature(key: bytes, namespace: str, environment: str, data: dict[str, str]) -> str:
    """HMAC-SHA256 of the ledger's data, its namespace and environment, under the installation's key."""
    message = json.dumps([namespace, environment, [data.get(k, "") for k in SIGNED]], separators=(",", ":"))
    return "hmac-sha256:" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


class ConfigMapLedger:
    """Read and write one environment's ledger ConfigMap with optimistic concurrency, signed with `key` (a
    ConfigMap a tenant could write is trusted only with the signature only the daemon can make)."""

    def __init__(self, kube: Kube, namespace: str, environment: str, key: bytes = b"",
                 read: Reader | None = None) -> None:
        self.kube, self.namespace, self.environment, self.key = kube, namespace, environment, key
        self.name = ledger_name(environment)
        self.path = RESOURCES["ConfigMap"].item(namespace, self.name)
        self._read = read or self._get
        self._version: str | None = None

    def _get(self) -> Manifest | None:
        return self.kube.get(self.path)

    def load(self) -> LedgerSnapshot | None:
        """The stored snapshot, or None when there is none yet; Unverifiable when its signature does not hold
        (the next save writes over it)."""
        return self._parse(self._read())

    def _parse(self, cm: Manifest | None) -> LedgerSnapshot | None:
        if cm is None:
            return None
        self._version = cm["metadata"]["resourceVersion"]
        data = cm.get("data") or {}
        if not hmac.compare_digest(str(data.get("signature", "")), signature(self.key, self.namespace,
                                                                             self.environment, data)):
            why = "has no signature" if "signature" not in data else "has a signature this installation did not make"
            raise Unverifiable(f"ConfigMap/{self.namespace}/{self.name}: the ledger {why} (forged, or written with "
                               "another ledger key); ignored")
        try:
            inventory = frozenset(ObjectRef(*ref) for ref in json.loads(data.get("inventory", "[]")))
            runs = tuple(sorted(json.loads(data.get("runs", "{}")).items()))
        except (ValueError, TypeError) as exc:
            raise Unverifiable(f"ConfigMap/{self.namespace}/{self.name}: unreadable ledger ({exc}); ignored") from None
        return LedgerSnapshot(inventory, runs, str(data.get("verified", "")))

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
                try:
                    theirs = self._parse(self._get())
                except Unverifiable:  # not ours to keep: written over
                    theirs = None
                if theirs is not None:
                    runs = dict(theirs.runs)
                    runs.update({run: result for run, result in snapshot.runs if result or run not in runs})
                    snapshot = LedgerSnapshot(snapshot.inventory, tuple(sorted(runs.items())), snapshot.verified)
        raise TemporaryError(f"ConfigMap/{self.namespace}/{self.name}: conflicting writes, gave up after 3 tries")

    def delete(self) -> None:
        """Delete the ConfigMap (its environment left Git); gone already is fine."""
        self.kube.delete(self.path)
        self._version = None

    def _body(self, snapshot: LedgerSnapshot) -> dict[str, Any]:
        runs = dict(sorted(snapshot.runs)[-MAX_RUNS:])
        inventory = sorted([r.group, r.kind, r.namespace, r.name] for r in snapshot.inventory)
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, ENVIRONMENT_LABEL: self.environment}
        data = {"inventory": json.dumps(inventory), "runs": json.dumps(runs, sort_keys=True),
                "verified": snapshot.verified}
        data["signature"] = signature(self.key, self.namespace, self.environment, data)
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels}, "data": data}
