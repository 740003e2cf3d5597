"""The one client of a local Ray cluster's dashboard (its head's HTTP server): the Jobs API (submissions go
through Ray's SDK, which first uploads a local `working_dir`/`py_modules` as a package; the REST API cannot),
the state API (ALIVE nodes, their groups and resources) and Serve's declarative REST API. Every request
carries the cluster's token (Ray's token authentication). Stateless and thread-safe: each call is one request.

`runtime.LocalRayCluster` (the process supervisor) makes one for its head; `apply`, `observe`, `cron`, `control`
and `serve` reach the cluster only through it."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import requests

from ...errors import PermanentError
from .nodes import GROUP_LABEL, HTTP_TIMEOUT, LocalRayError

DEPLOY_TIMEOUT = 120.0  # Serve's first PUT starts its controller and proxy
APPLICATIONS = "/api/serve/applications/"


class Dashboard:
    """The dashboard of cluster `cluster` at `url` (http://127.0.0.1:<port>), with the cluster's `headers`."""

    def __init__(self, cluster: str, url: str, headers: dict[str, str]) -> None:
        self.cluster = cluster
        self.url = url
        self.headers = headers

    # -- Jobs API --------------------------------------------------------------------------------------
    def jobs_api_ready(self) -> bool:
        """True once the head's job agent really takes submissions. An invalid label selector passes the head,
        reaches the job agent and is refused there before any job is created: proof that submissions work,
        leaving no job behind."""
        try:
            resp = requests.post(f"{self.url}/api/jobs/", timeout=HTTP_TIMEOUT, headers=self.headers,
                                 json={"entrypoint": "true", "submission_id": "ray-gitops-readiness-probe",
                                       "entrypoint_label_selector": {"-": ""}})
        except requests.RequestException:
            return False
        return "Invalid label key" in resp.text

    def submit_job(self, submission_id: str, entrypoint: str, *, runtime_env: dict | None = None,
                   metadata: dict | None = None, entrypoint_num_cpus: float | None = None,
                   entrypoint_num_gpus: float | None = None,
                   entrypoint_resources: dict[str, float] | None = None) -> bool:
        """Submit unless a job with this id exists; True only if newly submitted."""
        from ray.job_submission import JobSubmissionClient  # heavy import, only when submitting

        if self.job_info(submission_id) is not None:
            return False
        try:
            JobSubmissionClient(self.url, headers=self.headers).submit_job(
                entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                entrypoint_resources=entrypoint_resources)
        except (RuntimeError, ConnectionError, OSError) as exc:
            if "Please use a different submission_id" in str(exc):
                return False
            raise LocalRayError(f"cluster {self.cluster}: submitting job {submission_id!r} failed: {exc}") from exc
        return True

    def job_info(self, submission_id: str) -> dict | None:
        """Ray's JobDetails (status, start_time/end_time in Unix ms, message, error_type...); None on 404."""
        resp = requests.get(f"{self.url}/api/jobs/{submission_id}", timeout=HTTP_TIMEOUT, headers=self.headers)
        return None if resp.status_code == 404 else self._check(resp, f"reading job {submission_id!r}").json()

    def stop_job(self, submission_id: str) -> bool:
        """Ask Ray to stop the job; True if it was still running."""
        resp = requests.post(f"{self.url}/api/jobs/{submission_id}/stop", timeout=HTTP_TIMEOUT, headers=self.headers)
        if resp.status_code == 404:
            return False
        return self._check(resp, f"stopping job {submission_id!r}").json()["stopped"]

    # -- state API -------------------------------------------------------------------------------------
    def nodes(self, quiet: bool = False) -> list[dict]:
        """ALIVE nodes from the state API; [] on errors if quiet."""
        try:
            resp = requests.get(f"{self.url}/api/v0/nodes", timeout=HTTP_TIMEOUT, headers=self.headers,
                                params={"detail": "1", "limit": "10000"})
            nodes = self._check(resp, "listing nodes").json()["data"]["result"]["result"]
        except (requests.RequestException, LocalRayError):
            if quiet:
                return []
            raise
        return [n for n in nodes if n["state"] == "ALIVE"]

    def alive_nodes(self) -> dict[str, int]:
        """group -> number of ALIVE nodes as reported by Ray (the head counts as group "head")."""
        return dict(Counter(n["labels"].get(GROUP_LABEL, "") for n in self.nodes()))

    def node_resources(self) -> dict[str, dict[str, float]]:
        """group -> summed resources_total (CPU, GPU, memory, object_store_memory, custom) of ALIVE nodes."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for node in self.nodes():
            for resource, amount in node["resources_total"].items():
                if not resource.startswith("node:"):
                    totals[node["labels"].get(GROUP_LABEL, "")][resource] += amount
        return {group: dict(resources) for group, resources in totals.items()}

    # -- Serve's REST API ------------------------------------------------------------------------------
    def deploy_serve(self, ref: str, body: dict[str, Any]) -> None:
        """PUT the whole multi-application Serve config (declarative: applications not in it are removed); a
        config Serve's own validation refuses is a PermanentError."""
        try:
            resp = requests.put(f"{self.url}{APPLICATIONS}", json=body, headers=self.headers, timeout=DEPLOY_TIMEOUT)
        except requests.RequestException as exc:
            raise LocalRayError(f"{ref}: deploying serveConfigV2 on Ray cluster {self.cluster} failed: {exc}") from exc
        if resp.status_code == 400:
            raise PermanentError(f"{ref}: Serve refused serveConfigV2 on Ray cluster {self.cluster}: "
                                 + " ".join(resp.text.split())[-600:])
        if not resp.ok:
            raise LocalRayError(f"{ref}: deploying serveConfigV2 on Ray cluster {self.cluster} failed: HTTP "
                                f"{resp.status_code}: " + " ".join(resp.text.split())[-300:])

    def serve_details(self) -> dict[str, Any]:
        """Serve's details of its applications, deployments and proxies (GET, reads only)."""
        try:
            resp = requests.get(f"{self.url}{APPLICATIONS}", headers=self.headers, timeout=HTTP_TIMEOUT)
        except requests.RequestException as exc:
            raise LocalRayError(f"Ray cluster {self.cluster}: reading Serve's applications failed: {exc}") from exc
        if not resp.ok:
            raise LocalRayError(f"Ray cluster {self.cluster}: reading Serve's applications failed: HTTP "
                                f"{resp.status_code}")
        return resp.json()

    def _check(self, resp: requests.Response, what: str) -> requests.Response:
        if not resp.ok:
            raise LocalRayError(f"local Ray cluster {self.cluster!r}: {what} failed: "
                                f"HTTP {resp.status_code}: {resp.text[-800:]}")
        return resp
