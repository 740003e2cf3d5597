"""Changing objects on the cluster: server-side apply (field manager `ray-gitops`), delete, wait.

Called by `KubernetesTarget.apply` for one plan item at a time. Never client-side apply, never a
`last-applied-configuration` annotation. A field another manager owns is not overwritten (409 ->
PermanentError naming the managers and fields) unless `force`; the one exception is the worker
group list of an autoscaled cluster, which the autoscaler shares by design (see body.py): there
the live replicas are carried and the resourceVersion precondition makes taking the list safe.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ...errors import PermanentError, RayGitopsError, TemporaryError, Unreachable
from ...kubeapi import ApiError, Kube, resource
from ...metrics import Metrics
from ...model import DesiredObject, Manifest, ObjectRef
from .body import apply_body, carries_live_scale, only_worker_groups

log = logging.getLogger(__name__)


def is_rejection(exc: ApiError) -> bool:
    """The server refused the object itself (bad request, invalid, a patch of the wrong type)."""
    return exc.status in (400, 422) or (exc.status == 500 and "failed to create typed patch object" in exc.message)


def translate(ref: ObjectRef | str, exc: ApiError, desired: DesiredObject | None = None) -> RayGitopsError:
    """A RayGitopsError whose message starts with the object (and names the Git file when rejected). For a
    Secret, the server's text is left out (it may quote a value back); the fields it names stay."""
    message = exc.message
    if isinstance(ref, ObjectRef) and ref.kind == "Secret" and exc.status != 0:
        message = "(the server's message is not shown for a Secret: it may quote a value)"
    if is_rejection(exc) and desired is not None:
        fields = sorted({c["field"] for c in exc.causes if c.get("field")})
        where = f"{desired.file}#{desired.document}"
        detail = f" (fields: {', '.join(fields)})" if fields else ""
        return PermanentError(f"{ref}: {where}: rejected by the API server: {message}{detail}")
    if exc.status == 0:
        return Unreachable(f"{ref}: API server unreachable: {message}")
    if exc.status in (401, 403, 404, 405) or is_rejection(exc):
        return PermanentError(f"{ref}: {exc.status} {exc.reason}: {message}")
    return TemporaryError(f"{ref}: API server error {exc.status} {exc.reason}: {message}")


def conflict_error(ref: ObjectRef, exc: ApiError) -> PermanentError:
    conflicts = exc.conflicts()
    managers = sorted({m for m, _ in conflicts})
    fields = sorted({f for _, f in conflicts})
    return PermanentError(
        f"{ref}: apply conflict: {', '.join(fields)} owned by field manager(s) {', '.join(managers)} with a "
        "different value; not overwritten (spec.target.kubernetes.selfHeal is false; set annotation "
        "gitops.ray.io/force: \"true\" on the object, spec.target.kubernetes.force: true or selfHeal: true to take "
        "them over)")


class Applier:
    """Apply, delete and wait for one object at a time, as field manager `manager`."""

    def __init__(self, kube: Kube, metrics: Metrics, manager: str = "ray-gitops", attempts: int = 3) -> None:
        self.kube, self.metrics, self.manager, self.attempts = kube, metrics, manager, attempts

    def get(self, ref: ObjectRef) -> Manifest | None:
        try:
            return self.kube.get(resource(ref).item(ref.namespace, ref.name))
        except ApiError as exc:
            raise translate(ref, exc) from exc

    def apply(self, environment: str, desired: DesiredObject, live: Manifest | None, force: bool,
              ignore: tuple[str, ...] = ()) -> Manifest:
        """Server-side apply `desired` (the live values at the `ignore` pointers kept); the object as stored."""
        ref = desired.ref
        path = resource(ref).item(ref.namespace, ref.name)
        for _ in range(self.attempts):
            body = apply_body(environment, desired, live, ignore)
            try:
                return self.kube.apply(path, body, self.manager, force=force)
            except ApiError as exc:
                shared = carries_live_scale(desired, live)
                if exc.stale and shared:  # the autoscaler moved since we read: read again, carry its values
                    live = self.get(ref)
                    continue
                if (exc.field_conflict and shared and not force
                        and only_worker_groups(ref.kind, [f for _, f in exc.conflicts()])):
                    log.info("%s: taking the worker group list from %s (live replicas kept, resourceVersion %s)",
                             ref, ", ".join(sorted({m for m, _ in exc.conflicts()})),
                             body["metadata"]["resourceVersion"])
                    force = True
                    continue
                if exc.field_conflict:
                    self.metrics.apply_conflicts.labels(environment, ref.kind).inc()
                    raise conflict_error(ref, exc) from exc
                raise translate(ref, exc, desired) from exc
        raise TemporaryError(f"{ref}: changed {self.attempts} times while it was being applied; trying again later")

    def delete(self, ref: ObjectRef) -> Manifest | None:
        """Delete (propagation Background); the object as the server answered, None if it was already gone."""
        try:
            return self.kube.delete(resource(ref).item(ref.namespace, ref.name))
        except ApiError as exc:
            raise translate(ref, exc) from exc

    def wait_gone(self, ref: ObjectRef, uid: str, timeout: float, poll: float = 0.2) -> None:
        """Until no object with `uid` exists (finalizers may hold it a while), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.get(ref)
            if current is None or current["metadata"].get("uid") != uid:
                return
            if time.monotonic() > deadline:
                finalizers: Any = current["metadata"].get("finalizers") or []
                raise TemporaryError(f"{ref}: still being deleted after {timeout:.0f}s "
                                     f"(finalizers: {', '.join(finalizers) or 'none'})", retry_after=10.0)
            time.sleep(poll)
