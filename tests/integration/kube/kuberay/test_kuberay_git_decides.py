"""Git decides, with the real KubeRay operator and the daemon as a process: a hand edit is set back (and
said so, naming who made it), a RayCluster deleted by hand comes back, a renamed worker group leaves no
Pod behind, an environment removed from Git takes its Pods with it, two environments naming one object
both say so and nothing flips, and `run --once` climbs a dependsOn chain. Each timing is printed as the
median of three."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml
from daemon_kit import ENV, NEIGHBOURS, Loop, configmap, environment, raycluster
from kuberay_kit import cluster_pods, delete, get, pod_ready, raycluster_spec, workers
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = [pytest.mark.kube, pytest.mark.operator, pytest.mark.e2e]


def _live(loop: Loop, name: str = "train") -> dict[str, Any]:
    try:
        return get(loop.api_client, loop.namespace, "RayCluster", name)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def _worker_pods(loop: Loop, group: str | None = None, cluster: str = "train") -> list[client.V1Pod]:
    return [p for p in workers(cluster_pods(loop.api_client, loop.namespace, cluster))
            if group is None or p.metadata.labels.get("ray.io/group") == group]


def _grouped(name: str, group: str, replicas: int = 1) -> str:
    """A RayCluster whose one worker group is called `group`."""
    spec = raycluster_spec(replicas)
    spec["workerGroupSpecs"][0]["groupName"] = group
    return yaml.safe_dump({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": name}, "spec": spec})


def _median(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f}s ({', '.join(f'{t:.2f}' for t in times)})"


def test_a_hand_edit_is_healed_with_an_event_naming_its_manager_and_a_deleted_cluster_comes_back(
        loop: Loop, kuberay: Any) -> None:
    loop.set_interval("60s")  # only the watch can be this quick
    loop.commit("a cluster with one worker", raycluster=raycluster("train", 1))
    loop.start()
    loop.wait("1 ready worker", lambda: loop.ready_workers("train") == 1 and loop.status()[ENV]["health_status"]
              == "Healthy", timeout=60)
    custom = client.CustomObjectsApi(loop.api_client)
    healed = []
    for attempt in range(3):
        custom.patch_namespaced_custom_object(
            "ray.io", "v1", loop.namespace, "rayclusters", "train",
            [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 4}],
            field_manager="kubectl-edit", _content_type="application/json-patch+json")
        started = time.monotonic()
        loop.wait("replicas set back to 1 and one worker Pod left", lambda: _live(loop)["spec"][
            "workerGroupSpecs"][0]["replicas"] == 1 and len(_worker_pods(loop)) == 1, timeout=30, poll=0.1)
        healed.append(time.monotonic() - started)
        loop.wait("the correction counted", lambda attempt=attempt: loop.metric(
            "ray_gitops_drift_corrections_total", environment=ENV, kind="RayCluster") == attempt + 1, timeout=15)
    managers = {e["manager"]: e["operation"] for e in _live(loop)["metadata"]["managedFields"]
                if "f:workerGroupSpecs" in (e.get("fieldsV1") or {}).get("f:spec", {})}
    assert managers == {"ray-gitops": "Apply"}, "the field's ownership is taken back"
    events = client.CoreV1Api(loop.api_client).list_namespaced_event(loop.namespace).items
    corrected = [e.message for e in events if e.reason == "DriftCorrected" and e.involved_object.name == "train"]
    assert len(corrected) == 3 and all(m.startswith("drift corrected: spec.workerGroupSpecs[workers].replicas set "
                                                    "back to Git's value (changed by kubectl-edit)") for m in corrected)
    assert loop.log.read_text().count("drift corrected: spec.workerGroupSpecs[workers].replicas") == 3
    assert loop.status()[ENV]["sync_status"] == "Synced"

    recreated = []
    for _ in range(3):
        uid = _live(loop)["metadata"]["uid"]
        delete(loop.api_client, loop.namespace, "RayCluster", "train")
        started = time.monotonic()
        loop.wait("the RayCluster re-created",
                  lambda uid=uid: _live(loop).get("metadata", {}).get("uid") not in (None, uid), timeout=30, poll=0.1)
        recreated.append(time.monotonic() - started)
        loop.wait("its worker Ready again", lambda: len([p for p in _worker_pods(loop) if pod_ready(p)]) == 1
                  and not [p for p in _worker_pods(loop) if p.metadata.deletion_timestamp], timeout=60)
    print(f"kubectl-style edit of replicas 1 -> 4 -> set back, one worker Pod: {_median(healed)}; "
          f"RayCluster deleted by hand -> re-created: {_median(recreated)} (environment interval 60s, poll 1s)")
    assert loop.stop() == 0


def test_a_renamed_worker_group_leaves_no_pod_of_the_old_group(loop: Loop, kuberay: Any) -> None:
    loop.commit("group workers", raycluster=_grouped("train", "workers"))
    loop.start()
    loop.wait("a worker of group workers", lambda: len(_worker_pods(loop, "workers")) == 1, timeout=60)
    times, seen_draining = [], []
    for old, new in (("workers", "cpu"), ("cpu", "gpu"), ("gpu", "workers")):
        sha = loop.commit(f"rename {old} to {new}", raycluster=_grouped("train", new))
        started = time.monotonic()

        def drained(old: str = old, new: str = new, sha: str = sha) -> bool:
            state = loop.status()[ENV]
            if "draining" in (state["detail"].get("clusters", {}).get("train") or {}):
                seen_draining.append(old)
            groups = [g["groupName"] for g in _live(loop)["spec"]["workerGroupSpecs"]]
            return (not _worker_pods(loop, old) and groups == [new] and len(_worker_pods(loop, new)) == 1
                    and (state["revision"], state["health_status"]) == (sha, "Healthy"))
        loop.wait(f"no Pod of {old}, only group {new}", drained, timeout=60, poll=0.1)
        times.append(time.monotonic() - started)
    print(f"worker group renamed -> no Pod of the old group, the old group out of the spec: {_median(times)}")
    assert seen_draining, "the status said the old group was draining"
    assert "kuberay#1739" not in loop.log.read_text()
    loop.neighbours_in_sync(loop.remote.repo.head.commit.hexsha)
    assert loop.stop() == 0


def test_an_environment_removed_from_git_takes_its_objects_and_pods_with_it(loop: Loop, kuberay: Any) -> None:
    loop.commit("a cluster", raycluster=raycluster("train", 2))
    loop.start()
    loop.wait("2 ready workers", lambda: loop.ready_workers("train") == 2, timeout=60)
    core = client.CoreV1Api(loop.api_client)
    times = []
    for attempt in range(3):
        loop.remote.repo.git.rm("-r", "-q", f"environments/{ENV}")
        gone = loop.remote.commit(f"the environment leaves ({attempt})")
        started = time.monotonic()
        loop.wait("the RayCluster and every Pod of it gone", lambda: not _live(loop) and not cluster_pods(
            loop.api_client, loop.namespace, "train"), timeout=60, poll=0.1)
        times.append(time.monotonic() - started)
        loop.wait("Removed in status", lambda gone=gone: (lambda row: (row["sync_status"], row["revision"]))(
            loop.status()[ENV]) == ("Removed", gone), timeout=15)
        assert not [c for c in core.list_namespaced_config_map(loop.namespace).items
                    if c.metadata.name == f"ray-gitops-ledger-{ENV}"], "its ledger copy goes too"
        assert loop.metric("ray_gitops_reconcile_total", environment=ENV, result="success") is None
        loop.remote.write(f"environments/{ENV}/environment.yaml", environment(ENV, loop.namespace))
        loop.commit(f"back ({attempt})", raycluster=raycluster("train", 2))
        loop.wait("2 ready workers again", lambda: loop.ready_workers("train") == 2, timeout=60)
    print(f"environment removed from Git -> its RayCluster and Pods gone: {_median(times)}")
    loop.neighbours_in_sync(loop.remote.repo.head.commit.hexsha)
    assert loop.stop() == 0


def test_two_environments_naming_one_object_both_report_it_and_nothing_flips(loop: Loop, kuberay: Any) -> None:
    first, second = NEIGHBOURS
    shared_ns = loop.namespaces[first]
    text = yaml.safe_load(environment(second, loop.namespaces[second]))
    text["spec"]["target"]["kubernetes"]["namespaces"] = [shared_ns]
    loop.remote.write(f"environments/{second}/environment.yaml", yaml.safe_dump(text))
    loop.remote.write(f"environments/{first}/shared.yaml", configmap("shared", first))
    loop.remote.write(f"environments/{second}/shared.yaml", yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared", "namespace": shared_ns},
        "data": {"owner": second}}))
    loop.remote.commit("both name ConfigMap shared")
    loop.start()
    core = client.CoreV1Api(loop.api_client)

    def reported() -> bool:  # whichever created it first owns it (a claim decides a race): the other is refused
        rows = loop.status()
        return sorted((rows.get(name) or {}).get("sync_status", "") for name in NEIGHBOURS) == ["Failed", "OutOfSync"]
    loop.wait("both report the conflict", reported, timeout=60)
    owner = core.read_namespaced_config_map("shared", shared_ns).metadata.labels["gitops.ray.io/environment"]
    other = second if owner == first else first
    versions = set()
    for _ in range(2):  # the one refused is Failed: it backs off (5 s, 10 s, ...)
        refused = loop.reconciles(other, "error")
        loop.wait(f"another reconcile of {other}", lambda refused=refused: loop.reconciles(other, "error") > refused,
                  timeout=60)
        loop.cycles(1, owner)
        shared = core.read_namespaced_config_map("shared", shared_ns)
        versions.add(shared.metadata.resource_version)
        assert (shared.data, shared.metadata.labels["gitops.ray.io/environment"]) == ({"owner": owner}, owner)
    assert len(versions) == 1, "nothing flips"
    rows = loop.status()
    assert (rows[owner]["sync_status"], rows[other]["sync_status"]) == ("OutOfSync", "Failed")
    assert f"ConfigMap/{shared_ns}/shared belongs to environment {owner} (one object, one environment)" in \
        rows[other]["message"]
    assert rows[owner]["message"] == (f"ConfigMap/{shared_ns}/shared is also in environment {other} (one object, "
                                      f"one environment: {other} does not apply it)")
    assert loop.stop() == 0


def test_run_once_climbs_a_depends_on_chain_waiting_for_each_link(loop: Loop, kuberay: Any) -> None:
    loop.commit("a cluster in op", raycluster=raycluster("train", 2))
    for name, needs in ((NEIGHBOURS[0], ENV), (NEIGHBOURS[1], NEIGHBOURS[0])):
        text = yaml.safe_load(environment(name, loop.namespaces[name]))
        text["spec"]["dependsOn"] = [{"environment": needs}]
        loop.remote.write(f"environments/{name}/environment.yaml", yaml.safe_dump(text))
    sha = loop.remote.commit("n1 after op, n2 after n1")

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reconciler", "run", "--once", "--repo", loop.remote.url,
                           "--state-dir", str(loop.state), *loop.cluster_flags], capture_output=True, text=True,
                          timeout=300)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    rows = loop.status()
    assert {n: (r["revision"], r["sync_status"], r["health_status"]) for n, r in rows.items()} == dict.fromkeys(
        (ENV, *NEIGHBOURS), (sha, "Synced", "Healthy"))
    assert _live(loop)["status"]["readyWorkerReplicas"] == 2
    print(f"run --once on op -> n1 -> n2 (op a RayCluster of 2 workers): {took:.1f}s, exit 0")
