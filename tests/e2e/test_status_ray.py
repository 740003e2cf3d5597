"""The status page's API for a RayCluster and a RayJob on real Ray (the local target), beside two
ConfigMap environments: worker counts per group within min..max, and the job's run."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.model import job_submission_id
from tests.conftest import GitRemote, stop_local_clusters, write_neighbours
from tests.statuspage import StatusDaemon, ray_environment

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
ENV = "train"


def test_a_raycluster_shows_its_workers_and_a_rayjob_its_run(remote: GitRemote, tmp_path: Path) -> None:
    files = ray_environment(ENV)
    for path, text in files.items():
        remote.write(path, text)
    write_neighbours(remote)
    first = remote.commit("a cluster, a job and two neighbours")
    state = tmp_path / "state"
    daemon = StatusDaemon(remote.url, state, tmp_path / "daemon.log", ["--interval", "1s"])
    try:
        daemon.wait_for("the run to succeed", lambda: any(
            run["result"] == "succeeded" for run in daemon.api(f"/environments/{ENV}/runs")["items"])
            if daemon.environment(ENV) else False, timeout=240)
        daemon.wait_for("a Healthy environment", lambda: daemon.at(ENV, first) and (
            daemon.environment(ENV) or {}).get("health_status") == "Healthy", timeout=60)
        env = daemon.api(f"/environments/{ENV}")
        [run] = daemon.api(f"/environments/{ENV}/runs")["items"]
    finally:
        daemon.stop()
        stop_local_clusters(state)

    assert env["detail"]["clusters"] == {"demo": {"health": "Healthy", "groups": {
        "cpu": {"ready": 1, "desired": 1, "min": 0, "max": 4, "available": 1}}}}
    assert env["detail"]["jobs"] == {"count": {"status": "SUCCEEDED", "health": "Healthy"}}
    job = yaml.safe_load(files[f"environments/{ENV}/rayjob.yaml"])
    assert run["submission_id"] == job_submission_id(ENV, "count", job)
    assert (run["job"], run["status"], run["result"]) == ("count", "SUCCEEDED", "succeeded")
    assert run["start_time"] <= run["end_time"]
    assert run["duration"] == pytest.approx(run["end_time"] - run["start_time"])
    assert 0 < run["duration"] < 120
    objects = {o["object"]: o for o in env["objects"]}
    assert {k: (o["health"], o["last_action"]["outcome"]) for k, o in objects.items()} == {
        "RayCluster/default/demo": ("Healthy", "created"), "RayJob/default/count": ("Healthy", "submitted")}
