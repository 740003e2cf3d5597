"""The daemon's status page and API over real HTTP, for the e2e and browser tests."""
from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from tests.daemon import DaemonProcess
from tests.eventually import eventually

TESTDATA = Path(__file__).parent / "testdata"


class StatusDaemon(DaemonProcess):
    """`ray-gitops run` with GET helpers for its page and `/api/v1/`."""

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def api(self, path: str) -> Any:
        status, _, body = self.get("/api/v1" + path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def environment(self, name: str) -> dict[str, Any] | None:
        """The overview's row of `name`, None while it is not there (or the daemon does not answer)."""
        try:
            rows = self.api("/environments")["environments"]
        except OSError:
            return None
        return next((row for row in rows if row["environment"] == name), None)

    def at(self, name: str, revision: str, sync: str = "Synced") -> bool:
        row = self.environment(name)
        return row is not None and row["revision"] == revision and row["sync_status"] == sync

    def plan(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """The environment's plan once it is current (the page asks the same way)."""
        def ready() -> dict[str, Any] | None:
            plan: dict[str, Any] = self.api(f"/environments/{name}/plan")
            return plan if plan["status"] == "ready" else None
        return eventually(ready, timeout, 0.3, f"the plan of {name}")


def ray_environment(name: str) -> dict[str, str]:
    """Files of an environment with RayCluster `demo` (group cpu: 1 worker, min 0, max 4) and RayJob `count`
    on it: a head and one worker node, and a run of a few seconds."""
    return {
        f"environments/{name}/environment.yaml": "apiVersion: gitops.ray.io/v1alpha1\nkind: Environment\n"
        f"metadata: {{name: {name}}}\nspec: {{target: {{local: {{}}}}, interval: 2s}}\n",
        f"environments/{name}/raycluster.yaml": (TESTDATA / "raycluster.yaml").read_text().replace("REPLICAS", "1"),
        f"environments/{name}/rayjob.yaml": (TESTDATA / "rayjob.yaml").read_text(),
    }
