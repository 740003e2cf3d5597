"""The whole loop with the real KubeRay operator: `ray-gitops run` as a subprocess reconciles a Git
repository of three Kubernetes environments (the one under test and two neighbours in namespaces of
their own) onto the operator's control plane. kwok makes the operator's Pods Running and Ready. No
test writes a status: what the daemon reports comes from what the operator and kwok did.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from daemon_kit import ENV, NEIGHBOURS, Loop, configmap, raycluster, raycronjob, rayjob
from kuberay_kit import cluster_pods, cluster_services, get, pod_ready, workers
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from reconciler.model import parse_time
from reconciler.pipeline.reconcile import WAIT_RECHECK

pytestmark = [pytest.mark.kube, pytest.mark.operator, pytest.mark.e2e]
SUBMITTER_FINISHED_TIMEOUT_S = 30  # KubeRay's grace after the submitter ends, without a Ray head
READY = {"environment": ENV, "cluster": "train", "group": "workers", "state": "ready"}


def _live(loop: Loop, kind: str, name: str) -> dict[str, Any]:
    """The live object, {} while it does not exist."""
    try:
        return get(loop.api_client, loop.namespace, kind, name)
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise


def _deployment(loop: Loop, name: str = "pi") -> str:
    """The operator's jobDeploymentStatus of a RayJob ("" before it has one)."""
    return str(_live(loop, "RayJob", name).get("status", {}).get("jobDeploymentStatus", ""))


def _uids(pods: list[client.V1Pod]) -> set[str]:
    return {p.metadata.uid for p in pods}


def _memory(pod: client.V1Pod) -> str:
    return str(pod.spec.containers[0].resources.limits["memory"])


def _groups(loop: Loop, cluster: str = "train") -> dict[str, Any]:
    return loop.status()[ENV]["detail"]["clusters"][cluster]["groups"]


def test_a_raycluster_from_git_becomes_ready_scales_to_three_workers_and_back_on_revert(loop: Loop,
                                                                                      kuberay: Any) -> None:
    loop.set_interval("60s")  # the default: no help from drift checks
    first = loop.commit("a cluster with one worker", raycluster=raycluster("train", 1))
    loop.start()
    loop.wait("1 ready worker in the metrics", lambda: loop.metric("ray_gitops_raycluster_workers", **READY) == 1)
    loop.wait("the environment Healthy at the commit", lambda: (lambda s: (s["revision"], s["health_status"]))(
        loop.status()[ENV]) == (first, "Healthy"), timeout=30)

    live = get(loop.api_client, loop.namespace, "RayCluster", "train")
    pods = cluster_pods(loop.api_client, loop.namespace, "train")
    assert len(pods) == 2 and all(pod_ready(p) for p in pods), "the operator made a head and a worker; kwok: Ready"
    assert (live["status"]["state"], live["status"]["readyWorkerReplicas"]) == ("ready", 1), live["status"]
    assert _groups(loop)["workers"] == {"desired": 1, "min": 0, "max": 10, "ready": 1, "available": 1}
    assert loop.metric("ray_gitops_raycluster_state", environment=ENV, cluster="train", state="ready") == 1
    loop.neighbours_in_sync(first)

    scale = loop.commit("three workers", raycluster=raycluster("train", 3))
    committed = time.monotonic()
    seen: dict[str, float] = {}

    def three_ready() -> bool:
        if "pods" not in seen and loop.ready_workers("train") == 3:
            seen["pods"] = time.monotonic() - committed
        if "metric" not in seen and loop.metric("ray_gitops_raycluster_workers", **READY) == 3:
            seen["metric"] = time.monotonic() - committed
        return len(seen) == 2
    loop.wait("3 worker Pods Ready and 3 ready workers in the metrics", three_ready, poll=0.1)
    print(f"commit -> 3 worker Pods Ready: {seen['pods']:.1f}s; -> ray_gitops_raycluster_workers"
          f"{{state=\"ready\"}} 3: {seen['metric']:.1f}s (environment interval 60s, Git poll 1s)")
    assert seen["metric"] < seen["pods"] + WAIT_RECHECK + 3, "a Progressing environment is re-checked within 10 s"

    live = get(loop.api_client, loop.namespace, "RayCluster", "train")
    assert live["status"]["readyWorkerReplicas"] == 3 == len(workers(cluster_pods(loop.api_client, loop.namespace,
                                                                                  "train")))
    loop.wait("status: 3/3 ready", lambda: _groups(loop)["workers"]["ready"] == 3, timeout=15)
    assert _groups(loop)["workers"]["desired"] == 3
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayCluster", action="update") == 1

    reverted = loop.remote.revert(scale)
    loop.wait("1 worker Pod left after the revert", lambda: len(workers(cluster_pods(
        loop.api_client, loop.namespace, "train"))) == 1, timeout=60)
    loop.wait("1 ready worker in the metrics and status after the revert", lambda: loop.metric(
        "ray_gitops_raycluster_workers", **READY) == 1 and _groups(loop)["workers"] == {
        "desired": 1, "min": 0, "max": 10, "ready": 1, "available": 1}, timeout=30)
    assert get(loop.api_client, loop.namespace, "RayCluster", "train")["spec"]["workerGroupSpecs"][0]["replicas"] == 1
    state = loop.status()[ENV]
    assert (state["revision"], state["sync_status"], state["health_status"]) == (reverted, "Synced", "Healthy")
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayCluster", action="update") == 2
    loop.neighbours_in_sync(reverted)
    assert loop.stop() == 0


def test_a_template_change_replaces_pods_with_recreate_and_is_a_pending_restart_without(loop: Loop) -> None:
    loop.commit("two clusters", rolling=raycluster("rolling", memory="2Gi", recreate=True),
                pinned=raycluster("pinned", memory="2Gi"))
    loop.start()
    for name in ("rolling", "pinned"):
        loop.wait(f"{name}: 1 ready worker", lambda name=name: loop.metric(
            "ray_gitops_raycluster_workers", environment=ENV, cluster=name, group="workers", state="ready") == 1)
    loop.wait("the environment Healthy", lambda: loop.status()[ENV]["health_status"] == "Healthy", timeout=30)
    before = {name: _uids(cluster_pods(loop.api_client, loop.namespace, name)) for name in ("rolling", "pinned")}

    change = loop.commit("3Gi per node", rolling=raycluster("rolling", memory="3Gi", recreate=True),
                         pinned=raycluster("pinned", memory="3Gi"))
    replaced = loop.wait("rolling: every Pod replaced by a Ready one", lambda: (lambda pods: len(pods) == 2 and all(
        pod_ready(p) for p in pods) and not _uids(pods) & before["rolling"])(
        cluster_pods(loop.api_client, loop.namespace, "rolling")), timeout=60)
    print(f"upgradeStrategy Recreate: all Pods replaced and Ready {replaced:.1f}s after the commit was seen")
    assert {_memory(p) for p in cluster_pods(loop.api_client, loop.namespace, "rolling")} == {"3Gi"}

    # The same operator has acted on both clusters by now; without Recreate nothing happens to the Pods.
    loop.wait("the environment Healthy at the change", lambda: (lambda s: (s["revision"], s["health_status"]))(
        loop.status()[ENV]) == (change, "Healthy"), timeout=60)
    pinned_pods = cluster_pods(loop.api_client, loop.namespace, "pinned")
    assert _uids(pinned_pods) == before["pinned"] and {_memory(p) for p in pinned_pods} == {"2Gi"}
    pinned = get(loop.api_client, loop.namespace, "RayCluster", "pinned")
    assert pinned["status"]["observedGeneration"] < pinned["metadata"]["generation"], (
        "KubeRay writes no status for a template-only change; Healthy all the same (it was Progressing for good)")
    clusters = loop.status()[ENV]["detail"]["clusters"]
    assert set(clusters["pinned"]["pendingRestart"]) == {"headgroup", "workers"}, clusters["pinned"]
    assert "pendingRestart" not in clusters["rolling"], clusters["rolling"]
    assert "RayCluster pinned: pending restart: headgroup, workers still run the old template" in loop.status_table()

    # Roll the pinned cluster's Pods by hand, as a user would: the operator makes them from the new template.
    core = client.CoreV1Api(loop.api_client)
    for pod in pinned_pods:
        core.delete_namespaced_pod(pod.metadata.name, loop.namespace)
    loop.wait("pinned: new Ready Pods", lambda: (lambda pods: len(pods) == 2 and all(pod_ready(p) for p in pods)
                                                 and not _uids(pods) & before["pinned"])(
        cluster_pods(loop.api_client, loop.namespace, "pinned")), timeout=60)
    assert {_memory(p) for p in cluster_pods(loop.api_client, loop.namespace, "pinned")} == {"3Gi"}
    loop.wait("no pending restart once every Pod is newer than the change",
              lambda: "pendingRestart" not in loop.status()[ENV]["detail"]["clusters"]["pinned"], timeout=30)
    assert loop.status()[ENV]["health_status"] == "Healthy"
    loop.neighbours_in_sync(change)
    assert loop.stop() == 0


def test_pruning_a_raycluster_leaves_its_pods_and_services_to_the_garbage_collector(loop: Loop) -> None:
    loop.commit("a cluster and its settings", raycluster=raycluster("train", 2), settings=configmap("settings", ENV))
    loop.start()
    loop.wait("2 ready workers", lambda: loop.metric("ray_gitops_raycluster_workers", **READY) == 2)
    uid = get(loop.api_client, loop.namespace, "RayCluster", "train")["metadata"]["uid"]
    pods, services = (cluster_pods(loop.api_client, loop.namespace, "train"),
                      cluster_services(loop.api_client, loop.namespace, "train"))
    assert len(pods) == 3 and len(services) == 1
    for child in (*pods, *services):
        owner = child.metadata.owner_references[0]
        assert (owner.kind, owner.uid, owner.controller) == ("RayCluster", uid, True), "the operator's children"
    loop.cycles(2)
    deletes = loop.writes()["delete"]

    removal = loop.commit("remove the cluster", raycluster=None)
    gone = loop.wait("the RayCluster, its Pods and its Service gone", lambda: not _live(loop, "RayCluster", "train")
        and not cluster_pods(loop.api_client, loop.namespace, "train")
        and not cluster_services(loop.api_client, loop.namespace, "train"), timeout=90)
    print(f"prune: RayCluster, Pods and Service gone {gone:.1f}s after the commit")
    loop.cycles(2)

    assert loop.writes()["delete"] - deletes == 1, "ray-gitops deleted the RayCluster only; the rest was the GC"
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayCluster", action="delete") == 1
    assert client.CoreV1Api(loop.api_client).read_namespaced_config_map("settings", loop.namespace).data == {
        "owner": ENV}
    state = loop.status()[ENV]
    assert (state["revision"], state["sync_status"], state["health_status"]) == (removal, "Synced", "Healthy")
    assert state["detail"]["clusters"] == {}
    assert loop.metric("ray_gitops_raycluster_workers", **READY) is None, "no series for a pruned cluster"
    loop.neighbours_in_sync(removal)
    assert loop.stop() == 0


def _job_metrics(loop: Loop) -> dict[str, float | None]:
    samples = loop.samples()
    out: dict[str, float | None] = {}
    for status in ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"):
        out[status] = samples.get(("ray_gitops_rayjob_status", frozenset(
            {"environment": ENV, "job": "pi", "status": status}.items())))
    for result in ("succeeded", "failed", "stopped"):
        out[f"runs_{result}"] = samples.get(("ray_gitops_rayjob_runs_total", frozenset(
            {"environment": ENV, "job": "pi", "result": result}.items())))
    return out


def test_a_rayjob_runs_on_its_own_cluster_fails_without_a_ray_head_and_is_counted_once_never_resubmitted(
        loop: Loop) -> None:
    loop.commit("a job", pi=rayjob("pi"))
    started = time.monotonic()
    loop.start()

    running = loop.wait("the operator: RayJob pi Running", lambda: _deployment(loop) == "Running", timeout=60)
    job = get(loop.api_client, loop.namespace, "RayJob", "pi")
    cluster = job["status"]["rayClusterName"]
    assert job["spec"]["jobId"] == job["status"]["jobId"] and job["spec"]["jobId"].startswith(f"{ENV}-pi-")
    assert job["metadata"]["finalizers"] == ["ray.io/rayjob-finalizer"]
    owned = get(loop.api_client, loop.namespace, "RayCluster", cluster)
    assert [(o["kind"], o["uid"]) for o in owned["metadata"]["ownerReferences"]] == [("RayJob", job["metadata"]["uid"])]
    submitter = client.BatchV1Api(loop.api_client).read_namespaced_job("pi", loop.namespace)
    assert [(o.kind, o.uid) for o in submitter.metadata.owner_references] == [("RayJob", job["metadata"]["uid"])]
    loop.wait("status: the run PENDING (Running, no Ray job status yet), Progressing", lambda: (
        loop.status()[ENV]["detail"]["jobs"]["pi"] == {"status": "PENDING", "health": "Progressing"}), timeout=30)
    assert {k: v for k, v in _job_metrics(loop).items() if v} == {"PENDING": 1.0}
    assert loop.status()[ENV]["health_status"] == "Progressing"

    # While it runs, a label change is the same run: applied in place, no conflict over the operator's fields.
    labelled = loop.commit("label the job", pi=rayjob("pi", labels={"team": "ml"}))
    loop.wait("the label on the live RayJob", lambda: _live(loop, "RayJob", "pi")["metadata"].get("labels", {}).get(
        "team") == "ml", timeout=30)
    assert _deployment(loop) == "Running", "labelled while the run was in progress"
    after = get(loop.api_client, loop.namespace, "RayJob", "pi")
    assert (after["metadata"]["uid"], after["spec"]) == (job["metadata"]["uid"], job["spec"]), (
        "the same RayJob, its spec as the operator wrote it back")
    assert loop.metric("ray_gitops_apply_conflicts_total", environment=ENV, kind="RayJob") is None
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="update") == 1

    loop.wait("the operator: RayJob pi Failed", lambda: _deployment(loop) == "Failed",
              timeout=SUBMITTER_FINISHED_TIMEOUT_S + 90)
    status = get(loop.api_client, loop.namespace, "RayJob", "pi")["status"]
    assert (status["jobStatus"], status["reason"]) == ("FAILED", "JobDeploymentStatusTransitionGracePeriodExceeded")
    reported = loop.wait("status: the run FAILED, Degraded", lambda: (
        loop.status()[ENV]["detail"]["jobs"]["pi"] == {"status": "FAILED", "health": "Degraded"}), timeout=30)
    complete = {c.type: c for c in client.BatchV1Api(loop.api_client).read_namespaced_job(
        "pi", loop.namespace).status.conditions or []}["Complete"]
    grace = (parse_time(status["endTime"]) or 0) - complete.last_transition_time.timestamp()
    print(f"RayJob: Running {running:.1f}s after the daemon started; the submitter Job Complete at "
          f"{complete.last_transition_time:%H:%M:%S}; Failed {grace:.0f}s after it ({status['reason']}), "
          f"{time.monotonic() - started - reported:.0f}s after the daemon started; reported FAILED by ray-gitops "
          f"{reported:.1f}s later")
    assert grace >= SUBMITTER_FINISHED_TIMEOUT_S - 1, status
    state = loop.status()[ENV]
    assert (state["sync_status"], state["health_status"]) == ("Synced", "Degraded")
    assert {k: v for k, v in _job_metrics(loop).items() if v} == {"FAILED": 1.0, "runs_failed": 1.0}
    assert loop.metric("ray_gitops_rayjob_duration_seconds_count", environment=ENV, job="pi") == 1
    stale = status.get("rayClusterStatus") or {}
    assert stale.get("state") != "ready", "rayClusterStatus is a snapshot from before the cluster was ready"
    assert get(loop.api_client, loop.namespace, "RayCluster", cluster)["status"]["state"] == "ready"

    # Never submitted again: several cycles later, the same RayJob, the same submitter, one run counted.
    writes = loop.writes()
    loop.cycles(4)
    assert loop.writes() == writes, "no write (or dry-run) for a finished run"
    again = get(loop.api_client, loop.namespace, "RayJob", "pi")
    assert again["metadata"]["uid"] == job["metadata"]["uid"]
    assert client.BatchV1Api(loop.api_client).read_namespaced_job("pi", loop.namespace).metadata.uid == (
        submitter.metadata.uid)
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="submit") == 1
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="recreate") is None
    assert loop.writes()["delete"] == 0, "the RayJob's RayCluster, submitter and Service are the operator's"
    assert loop.metric("ray_gitops_reconcile_total", environment=ENV, result="error") is None
    assert loop.metric("ray_gitops_reconcile_total", environment=ENV, result="success") == 2  # submit, label
    assert _job_metrics(loop)["runs_failed"] == 1
    state = loop.status()[ENV]
    assert (state["revision"], state["sync_status"], state["health_status"]) == (labelled, "Synced", "Degraded")

    # A label change after the run finished is applied in place too: the same RayJob, no new run.
    relabelled = loop.commit("label the finished job", pi=rayjob("pi", labels={"team": "ml", "stage": "done"}))
    loop.wait("the new label on the finished RayJob", lambda: _live(loop, "RayJob", "pi")["metadata"].get(
        "labels", {}).get("stage") == "done", timeout=30)
    after = get(loop.api_client, loop.namespace, "RayJob", "pi")
    assert (after["metadata"]["uid"], after["status"]["jobDeploymentStatus"]) == (job["metadata"]["uid"], "Failed")
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="update") == 2
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="submit") == 1
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayJob", action="recreate") is None
    assert loop.metric("ray_gitops_apply_conflicts_total", environment=ENV, kind="RayJob") is None
    loop.wait("Synced and Degraded at the label change", lambda: (lambda s: (
        s["revision"], s["sync_status"], s["health_status"]))(loop.status()[ENV]) == (relabelled, "Synced",
                                                                                     "Degraded"), timeout=30)
    assert _job_metrics(loop)["runs_failed"] == 1
    loop.neighbours_in_sync(relabelled)
    assert loop.stop() == 0
    print(f"RayJob test: {time.monotonic() - started:.0f}s")


def test_the_operators_writes_are_never_drift_and_a_steady_state_writes_nothing_even_after_a_restart(
        loop: Loop) -> None:
    sha = loop.commit("a cluster, a job and settings", raycluster=raycluster("train", 2), pi=rayjob("pi"),
                      settings=configmap("settings", ENV))
    loop.start()
    loop.wait("2 ready workers", lambda: loop.metric("ray_gitops_raycluster_workers", **READY) == 2)
    loop.wait("the operator: RayJob pi Failed (no Ray head): its last status write",
              lambda: _deployment(loop) == "Failed", timeout=SUBMITTER_FINISHED_TIMEOUT_S + 90)
    loop.wait("ray-gitops saw the run end", lambda: _job_metrics(loop)["runs_failed"] == 1, timeout=30)
    cluster, job = (get(loop.api_client, loop.namespace, kind, name) for kind, name in (
        ("RayCluster", "train"), ("RayJob", "pi")))
    assert cluster["status"]["state"] == "ready" and job["metadata"]["finalizers"] == ["ray.io/rayjob-finalizer"]
    operator = {entry["manager"] for obj in (cluster, job) for entry in obj["metadata"]["managedFields"]}
    assert operator == {"ray-gitops", "kuberay-operator"}, "both objects carry the operator's writes"

    loop.cycles(1)
    writes = loop.writes()
    loop.cycles(5)
    assert loop.writes() == writes, "five no-op cycles: no apply, create, update, delete or dry-run"
    assert loop.metric("ray_gitops_reconcile_total", environment=ENV, result="success") == 1
    assert loop.metric("ray_gitops_reconcile_total", environment=ENV, result="error") is None
    state = loop.status()[ENV]
    assert (state["revision"], state["sync_status"], state["message"]) == (sha, "Synced", "no changes")

    assert loop.stop() == 0
    loop.start()  # a restart (or a new leader): empty caches, the same objects
    loop.wait("the restarted daemon's first reconciles", lambda: all(
        loop.checks(name) >= 2 for name in (ENV, *NEIGHBOURS)), timeout=60)
    first = loop.writes()
    assert {verb: first[verb] for verb in ("apply", "create", "update", "delete")} == dict.fromkeys(
        ("apply", "create", "update", "delete"), 0.0), "nothing written after a restart"
    loop.cycles(5)
    assert loop.writes() == first, "after the first cycle's dry-runs, nothing more"
    assert loop.metric("ray_gitops_rayjob_runs_total", environment=ENV, job="pi", result="failed") is None, (
        "the run was counted by the first daemon, not again")
    for (environment, kind), seen in loop.drift_seen.items():
        assert seen == 0, f"drifted_objects{{environment={environment},kind={kind}}} reached {seen}"
    assert get(loop.api_client, loop.namespace, "RayJob", "pi")["metadata"]["uid"] == job["metadata"]["uid"]
    loop.neighbours_in_sync(sha)
    assert loop.stop() == 0


def _cron_runs(loop: Loop, cron: str = "nightly") -> list[dict[str, Any]]:
    """The RayJobs the operator made for the RayCronJob `cron` (labelled `ray.io/cronjob-name`)."""
    return client.CustomObjectsApi(loop.api_client).list_namespaced_custom_object(
        "ray.io", "v1", loop.namespace, "rayjobs", label_selector=f"ray.io/cronjob-name={cron}")["items"]


def test_a_raycronjob_from_git_runs_on_schedule_its_runs_are_counted_never_pruned_and_suspend_holds(
        loop: Loop) -> None:
    sha = loop.commit("every minute", nightly=raycronjob("nightly", "* * * * *"))
    loop.start()
    ref = f"RayCronJob/{loop.namespace}/nightly"
    loop.wait("the environment Healthy, the RayCronJob scheduling", lambda: (lambda s: (
        s.get("revision"), s.get("health_status"), s.get("detail", {}).get("objects", {}).get(ref, {}).get("message"))
    )(loop.status().get(ENV, {})) == (sha, "Healthy", "scheduling"), timeout=60)
    made = loop.wait("the operator: a RayJob for the first slot", lambda: len(_cron_runs(loop)) >= 1, timeout=90)
    run = _cron_runs(loop)[0]
    cron = get(loop.api_client, loop.namespace, "RayCronJob", "nightly")
    owners = [(o["kind"], o["uid"]) for o in run["metadata"]["ownerReferences"]]
    assert owners == [("RayCronJob", cron["metadata"]["uid"])]
    assert "app.kubernetes.io/managed-by" not in run["metadata"].get("labels", {}), "the operator's, not ours"

    counted = loop.wait("ray-gitops counted the first run (Failed: no Ray head)", lambda: (loop.metric(
        "ray_gitops_rayjob_runs_total", environment=ENV, job="nightly", result="failed") or 0) >= 1,
        timeout=SUBMITTER_FINISHED_TIMEOUT_S + 120)
    print(f"RayCronJob: first RayJob {made:.1f}s after its Healthy status; its run counted failed {counted:.1f}s later")
    assert loop.status()[ENV]["detail"]["jobs"]["nightly"]["status"] == "FAILED"
    assert loop.metric("ray_gitops_rayjob_status", environment=ENV, job="nightly", status="FAILED") == 1
    loop.cycles(2)
    loop.wait("each ended run counted once", lambda: loop.metric(
        "ray_gitops_rayjob_runs_total", environment=ENV, job="nightly", result="failed") == sum(
        r.get("status", {}).get("jobStatus") == "FAILED" for r in _cron_runs(loop)), timeout=30)
    assert loop.writes()["delete"] == 0, "the RayJobs a RayCronJob makes are never pruned"
    assert run["metadata"]["uid"] in {r["metadata"]["uid"] for r in _cron_runs(loop)}
    state = loop.status()[ENV]
    assert (state["sync_status"], state["health_status"]) == ("Synced", "Healthy"), state
    assert set(state["detail"]["objects"]) == {ref}, "its runs are not in Git"

    suspended = loop.commit("suspend the schedule", nightly=raycronjob("nightly", "* * * * *", suspend=True))
    loop.wait("Suspended at the commit", lambda: (lambda s: (s["revision"], s["health_status"]))(
        loop.status()[ENV]) == (suspended, "Suspended"), timeout=30)
    assert get(loop.api_client, loop.namespace, "RayCronJob", "nightly")["spec"]["suspend"] is True
    assert loop.metric("ray_gitops_apply_total", environment=ENV, kind="RayCronJob", action="update") == 1
    loop.neighbours_in_sync(suspended)
    assert loop.stop() == 0
