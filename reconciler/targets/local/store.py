"""What was applied to the local target: one JSON record per object under
`<state>/local/objects/<environment>/<kind>.<namespace>.<name>.json`, written atomically.

The local target's "API server". A record holds the manifest as applied and, for a RayJob, its
submission id, the cluster it runs on and its last status. Thread-safe: one environment's records
are written by the one thread reconciling it.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...model import ObjectRef

Record = dict[str, Any]
RUNS_FILE = "runs.json"  # the final status of runs whose RayJob is gone
KEEP_BURIED = 500


class ObjectStore:
    """The records of every environment on the local target."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, environment: str, ref: ObjectRef) -> Path:
        return self.root / environment / f"{ref.kind}.{ref.namespace}.{ref.name}.json"

    def load(self, environment: str, ref: ObjectRef) -> Record | None:
        path = self._path(environment, ref)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, environment: str, ref: ObjectRef, record: Record) -> None:
        path = self._path(environment, ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, sort_keys=True))
        os.replace(tmp, path)

    def forget(self, environment: str, ref: ObjectRef) -> None:
        self._path(environment, ref).unlink(missing_ok=True)

    def ray_records(self, environment: str) -> Iterator[tuple[str, Record]]:
        """(kind, record) of the environment's RayClusters, RayJobs and RayCronJobs."""
        for path in sorted((self.root / environment).glob("Ray*.json")):
            yield path.name.split(".")[0], json.loads(path.read_text())

    def bury(self, environment: str, run: str, job: str, status: dict[str, Any]) -> None:
        """Keep the final status of a run whose RayJob is gone (`DeleteSelf`), so that it is still reported
        ended, never submitted again (the newest KEEP_BURIED per environment)."""
        buried = self.buried(environment)
        buried[run] = {"job": job, "status": status}
        path = self.root / environment / RUNS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(list(buried.items())[-KEEP_BURIED:]), sort_keys=False))
        os.replace(tmp, path)

    def buried(self, environment: str) -> dict[str, Record]:
        """run -> {job, status} of the runs whose RayJob went after they ended."""
        path = self.root / environment / RUNS_FILE
        return json.loads(path.read_text()) if path.exists() else {}
