"""`expected()`: each desired object as the API server would store it, by server-side dry-run apply.

Called by `KubernetesTarget.expected` before planning. The body is the real apply's (body.py),
so CRD defaults, quantity spellings and field order never show as drift. Results are cached by
(hash of the body, live resourceVersion): a cycle with no new revision and no live change sends
no request. A body the server refuses is returned as is: the real apply then reports why.
"""
from __future__ import annotations

import copy
import json
import threading

from ...errors import TemporaryError
from ...kubeapi import ApiError, Kube, resource
from ...model import DesiredObject, Manifest, ObjectRef
from ...pipeline.target import hide_secret_values
from .apply import is_rejection
from .body import apply_body, as_applied, body_hash, without_precondition, written_only_by


def _compact(manifest: Manifest) -> bytes:
    """What the cache keeps: a third of the dict's memory (3,000 objects at N = 1,000)."""
    return json.dumps(manifest, separators=(",", ":")).encode()


class DryRuns:
    """Dry-run applies with a per-object cache."""

    def __init__(self, kube: Kube, manager: str = "ray-gitops") -> None:
        self.kube, self.manager = kube, manager
        self._cache: dict[ObjectRef, tuple[tuple[str, str], bytes]] = {}  # the stored object as compact JSON
        self._lock = threading.Lock()

    def expected(self, environment: str, desired: DesiredObject, live: Manifest,
                 ignore: tuple[str, ...] = ()) -> Manifest:
        """`desired` as stored if applied now over `live`. Forced: a conflict is the real apply's to report,
        the plan should still show the difference."""
        ref = desired.ref
        key, body = self._key(environment, desired, live, ignore)
        with self._lock:
            hit = self._cache.get(ref)
        if hit is not None and hit[0] == key:
            return json.loads(hit[1])
        if as_applied(live, body, self.manager):  # the same body, applied by us, and no one wrote since
            stored = hide_secret_values(live)
            with self._lock:
                self._cache[ref] = (key, _compact(stored))
            return stored
        try:
            stored = self.kube.apply(resource(ref).item(ref.namespace, ref.name), body, self.manager, force=True,
                                     dry_run=True)
        except ApiError as exc:
            if exc.status in (0, 429) or (exc.status >= 500 and not is_rejection(exc)):
                raise TemporaryError(f"{ref}: dry-run apply failed: {exc}") from exc
            stored = copy.deepcopy(body)  # the body shares parts with the desired object
        stored = hide_secret_values(stored)
        with self._lock:
            self._cache[ref] = (key, _compact(stored))
        return stored

    def remember(self, environment: str, desired: DesiredObject, stored: Manifest,
                 ignore: tuple[str, ...] = ()) -> None:
        """After a real apply: `stored` is what a dry-run of the same body over it returns, so the next
        cycle needs none. An object only we have written needs no entry (most creates): it carries the
        fingerprint of the body, and `as_applied` says so next time without building a key now."""
        if written_only_by(stored, self.manager):
            self.forget(desired.ref)
            return
        key, _ = self._key(environment, desired, stored, ignore)
        with self._lock:
            self._cache[desired.ref] = (key, _compact(hide_secret_values(stored)))

    def forget(self, ref: ObjectRef) -> None:
        with self._lock:
            self._cache.pop(ref, None)

    @staticmethod
    def _key(environment: str, desired: DesiredObject, live: Manifest,
             ignore: tuple[str, ...]) -> tuple[tuple[str, str], Manifest]:
        body = without_precondition(apply_body(environment, desired, live, ignore))
        return (body_hash(body), str(live["metadata"].get("resourceVersion"))), body
