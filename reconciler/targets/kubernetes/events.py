"""Kubernetes Events on the objects ray-gitops changes: what was done, from which revision.

Called by `KubernetesTarget.report_event` after each applied plan item (never in a steady state,
so an unchanged cycle still writes nothing). An Event that cannot be written is logged, never fatal.
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone

from ...kubeapi import ApiError, Kube
from ...model import ENVIRONMENT_LABEL, ObjectRef, Outcome

log = logging.getLogger(__name__)
REASONS = {Outcome.CREATED: "Created", Outcome.CONFIGURED: "Updated", Outcome.RECREATED: "Recreated",
           Outcome.DELETED: "Pruned", Outcome.SUBMITTED: "Submitted", Outcome.FAILED: "Failed"}
COMPONENT = "ray-gitops"


def event_body(ref: ObjectRef, uid: str, outcome: Outcome, message: str, environment: str, reason: str = "") -> dict:
    """A core/v1 Event about `ref` (type Warning for failures; `reason` defaults to the outcome's)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": ref.namespace,
                     "labels": {ENVIRONMENT_LABEL: environment}},
        "involvedObject": {"apiVersion": f"{ref.group}/v1" if ref.group else "v1", "kind": ref.kind,
                           "namespace": ref.namespace, "name": ref.name, **({"uid": uid} if uid else {})},
        "reason": reason or REASONS.get(outcome, outcome.value.capitalize()), "message": message[:1024],
        "type": "Warning" if outcome == Outcome.FAILED else "Normal",
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }


def emit(kube: Kube, ref: ObjectRef, uid: str, outcome: Outcome, message: str, environment: str,
         reason: str = "") -> None:
    """Write the Event; a failure (RBAC, a gone namespace) is only logged."""
    try:
        kube.request("create", "POST", f"/api/v1/namespaces/{ref.namespace}/events",
                     body=event_body(ref, uid, outcome, message, environment, reason))
    except ApiError as exc:
        log.warning("%s: could not record the %s event: %s", ref, REASONS.get(outcome, outcome.value), exc)
