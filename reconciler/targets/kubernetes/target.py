"""The Kubernetes target as the pipeline sees it (the Target protocol, with the optional ledger copy
and Events capabilities).

It observes from informer caches (cache.py, observe.py), plans against server-side dry-runs
(dryrun.py), applies as field manager `ray-gitops` (apply.py, body.py), emits Events (events.py)
and keeps each environment's ledger in a ConfigMap (ledger.py). It decides nothing: the planner
does. One instance serves every environment on the same cluster connection.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from ...errors import PermanentError, RayGitopsError
from ...kubeapi import ApiError, Kube, RateLimiter, resource
from ...kuberay import cluster_spec_path
from ...metrics import Metrics
from ...model import (
    ENVIRONMENT_LABEL,
    LEDGER_PREFIX,
    Action,
    EnvironmentSpec,
    LedgerSnapshot,
    LiveObject,
    Manifest,
    ObjectRef,
    Outcome,
    PlanItem,
    RenderedEnvironment,
    parse_time,
)
from ...pipeline.target import ApplyContext, Observation, RunReport
from . import events, observe
from .apply import Applier, translate
from .body import forced
from .cache import Informer
from .dryrun import DryRuns
from .ledger import ConfigMapLedger, Unverifiable, ledger_name
from .options import KubernetesOptions

log = logging.getLogger(__name__)
OUTCOMES = {Action.CREATE: Outcome.CREATED, Action.UPDATE: Outcome.CONFIGURED, Action.RECREATE: Outcome.RECREATED,
            Action.SUBMIT: Outcome.SUBMITTED}


@dataclass(frozen=True)
class Writer:
    """What writes for one identity (the daemon's, or a tenant service account it impersonates)."""

    kube: Kube
    applier: Applier
    dry_runs: DryRuns


class KubernetesTarget:
    """One cluster connection (a cluster of the daemon's settings), shared by every environment that names it.

    Reads that feed the shared caches (list+watch per kind) are the daemon's own. Every write of an
    environment with a service account (`serviceAccountName`, else `default_service_account`) acts as
    `system:serviceaccount:<its namespace>:<name>`: apply, dry-run, delete, Events and its ledger ConfigMap.
    """

    kind = "kubernetes"

    def __init__(self, options: KubernetesOptions, metrics: Metrics, *, api_client: k8s.ApiClient,
                 field_manager: str = "ray-gitops", limiter: RateLimiter | None = None,
                 default_service_account: str = "", on_change: Callable[[str], None] | None = None,
                 owns_client: bool = False, ledger_key: bytes = b"") -> None:
        self.metrics, self.field_manager = metrics, field_manager
        self.on_change = on_change  # told the environment of an object (or a Ray Pod) someone else changed
        self.default_service_account = default_service_account
        self._owns_client = owns_client  # close the connection with the target
        self.ledger_key = ledger_key  # signs the ledger ConfigMaps (tenants cannot read it)
        self._unverifiable: set[str] = set()  # environments whose ledger copy was reported unverifiable
        self.api_client = api_client
        self.kube = Kube(self.api_client, self._count, limiter)
        self.recorder = events.Recorder(self.kube.limiter.twin())  # Events never wait behind (or delay) applies
        self.applier = Applier(self.kube, metrics, field_manager)  # the daemon's own reads
        self._writers: dict[str, Writer] = {}
        self._informers: dict[tuple[str, str], Informer] = {}
        self._ledgers: dict[tuple[str, str], ConfigMapLedger] = {}
        self._no_pods: set[str] = set()  # namespaces whose Pods we may not list (RBAC)
        self._namespaced: set[str] = set()  # kinds we may not list cluster-wide: one cache per namespace
        self._pruned: dict[ObjectRef, str] = {}  # object -> uid of what we deleted, until its Event is written
        self._owners: dict[ObjectRef, str] = {}  # object -> the environment that writes it (one object, one env.)
        self._lock = threading.Lock()

    def _count(self, verb: str) -> None:
        self.metrics.kube_requests.labels(verb).inc()

    def writer(self, options: KubernetesOptions) -> Writer:
        """The writer of an environment: impersonating its service account, if it has one."""
        account = options.service_account or self.default_service_account
        user = f"system:serviceaccount:{options.namespace}:{account}" if account else ""
        with self._lock:
            if user not in self._writers:
                kube = self.kube.acting_as(user)
                self._writers[user] = Writer(kube, Applier(kube, self.metrics, self.field_manager),
                                             DryRuns(kube, self.field_manager))
            return self._writers[user]

    # -- caches --------------------------------------------------------------------------------------
    def _informer(self, kind: str, namespace: str) -> Informer:
        """The cache holding `kind` objects of `namespace`: one list+watch per kind for the whole cluster
        (filtered by label), or, when the daemon may not list that kind cluster-wide, one per namespace."""
        with self._lock:
            key = (kind, namespace if kind in self._namespaced else "")
            informer = self._informers.get(key)
            if informer is None:
                try:
                    informer = self._start_informer(*key)
                except ApiError as exc:
                    if key[1] or exc.status != 403:
                        raise translate(f"{kind} in namespace {namespace}", exc) from exc
                    log.info("%s may not be listed cluster-wide (%s); watching it per namespace", kind, exc.reason)
                    self._namespaced.add(kind)
                    key = (kind, namespace)
                    try:
                        informer = self._start_informer(*key)
                    except ApiError as exc2:
                        raise translate(f"{kind} in namespace {namespace}", exc2) from exc2
                self._informers[key] = informer
        return informer

    def _start_informer(self, kind: str, namespace: str) -> Informer:
        resource_, selector, transform = observe.cache_of(kind)
        listener = self._changed if self.on_change is not None and kind != observe.CRON_RUNS else None
        return Informer(self.kube, resource_.collection(namespace), selector, transform, on_change=listener,
                        manager=self.field_manager).start()

    def _changed(self, obj: Manifest) -> None:
        """A watch saw someone else change `obj`: tell `on_change` its environment (a Ray Pod's: its RayCluster's).
        The ledger ConfigMaps are ray-gitops' own bookkeeping, not drift."""
        meta = obj.get("metadata") or {}
        if "cluster" in obj:  # a Ray Pod's summary
            informer = self._known(ObjectRef("ray.io", "RayCluster", str(meta.get("namespace")), ""))
            cluster = informer.get(str(meta.get("namespace")), str(obj["cluster"])) if informer else None
            meta = (cluster or {}).get("metadata") or {}
        environment = ((meta.get("labels") or {}).get(ENVIRONMENT_LABEL))
        if environment and self.on_change is not None and not str(meta.get("name")).startswith(LEDGER_PREFIX):
            self.on_change(str(environment))

    def _known(self, ref: ObjectRef) -> Informer | None:
        """The cache already holding `ref`'s kind and namespace, if any."""
        with self._lock:
            return self._informers.get((ref.kind, ref.namespace if ref.kind in self._namespaced else ""))

    def _cached(self, ref: ObjectRef) -> Manifest | None:
        """The live object from its cache (after our own writes show), else from a GET."""
        informer = self._known(ref)
        if informer is None:
            return self.applier.get(ref)
        try:
            informer.settle()
        except ApiError as exc:
            raise translate(ref, exc) from exc
        return informer.get(ref.namespace, ref.name)

    # -- Target protocol -----------------------------------------------------------------------------
    def observe(self, rendered: RenderedEnvironment[KubernetesOptions], refs: set[ObjectRef],
                pending_runs: frozenset[str]) -> Observation:
        """Live objects from the caches. A pending run whose RayJob is gone was deleted (its TTL, `DeleteSelf`,
        a person) before it was seen to end: reported `DELETED`, it is never re-created."""
        environment = rendered.spec.name
        wanted: list[tuple[ObjectRef, Informer]] = []
        ray_namespaces = set()
        for ref in sorted(refs):
            try:
                resource(ref)
            except PermanentError as exc:
                log.warning("environment %s: %s", environment, exc)
                continue
            wanted.append((ref, self._informer(ref.kind, ref.namespace)))
            if cluster_spec_path(ref.kind):
                ray_namespaces.add(ref.namespace)
        for informer in {id(i): i for _, i in wanted}.values():
            try:
                informer.settle()
            except ApiError as exc:
                raise translate(informer.path, exc) from exc
        pods = {ns: self._ray_pods(ns, environment) for ns in ray_namespaces}
        live = {}
        for ref, informer in wanted:
            manifest = informer.get(ref.namespace, ref.name)
            if manifest is not None:
                found = pods.get(ref.namespace)
                live[ref] = observe.live_object(ref, manifest, None if found is None else observe.ready_workers(found),
                                                None if found is None else observe.oldest_pods(found))
        deleted = [RunReport(run, d.ref.name, "DELETED") for d in rendered.objects
                   if d.ref.kind == "RayJob" and d.ref not in live
                   and (run := d.run_id(environment)) in pending_runs]
        return Observation(live, tuple(deleted) + self._cron_runs(rendered))

    def _cron_runs(self, rendered: RenderedEnvironment[KubernetesOptions]) -> tuple[RunReport, ...]:
        """The runs of the environment's RayCronJobs: the RayJobs KubeRay made for them (counted by the
        pipeline like any run; never in the inventory, so never pruned)."""
        crons = {(d.ref.namespace, d.ref.name) for d in rendered.objects if d.ref.kind == "RayCronJob"}
        reports = []
        for namespace in {ns for ns, _ in crons}:
            informer = self._informer(observe.CRON_RUNS, namespace)
            for job in informer.items(namespace):
                status = job["status"]
                if (job["metadata"]["namespace"], job["cronjob"]) in crons and status["jobId"] and status["jobStatus"]:
                    reports.append(RunReport(status["jobId"], job["cronjob"], status["jobStatus"],
                                             parse_time(status["startTime"]), parse_time(status["endTime"])))
        return tuple(reports)

    def _ray_pods(self, namespace: str, environment: str) -> list[dict[str, Any]] | None:
        """The cached Ray Pods (summaries) of `namespace`; None when Pods cannot be read (workers stay unknown)."""
        if namespace in self._no_pods:
            return None
        try:
            return self._informer("Pod", namespace).items(namespace)
        except PermanentError as exc:
            log.warning("environment %s: ready workers unknown: %s", environment, exc)
            self._no_pods.add(namespace)
            return None

    def expected(self, rendered: RenderedEnvironment[KubernetesOptions],
                 live: dict[ObjectRef, LiveObject]) -> dict[ObjectRef, Manifest]:
        dry_runs = self.writer(rendered.spec.target.options).dry_runs
        out = {}
        for desired in rendered.objects:
            current = live.get(desired.ref)
            if current is not None and not current.manifest["metadata"].get("deletionTimestamp"):
                out[desired.ref] = dry_runs.expected(rendered.spec.name, desired, current.manifest,
                                                     rendered.spec.ignore)
        return out

    def apply(self, item: PlanItem, context: ApplyContext[KubernetesOptions]) -> Outcome:
        ref = item.ref
        options = context.options
        writer = self.writer(options)
        if item.action == Action.DELETE:
            self._delete(writer, ref, wait=0)
            return Outcome.DELETED
        if item.action not in OUTCOMES or item.desired is None:
            raise PermanentError(f"{ref}: cannot {item.action.value} on Kubernetes without a desired object")
        live = self._cached(ref)
        self._own(ref, live, context.environment)
        if item.action == Action.RECREATE:
            self._delete(writer, ref, wait=options.delete_timeout, live=live)
            live = None
        stored = writer.applier.apply(context.environment, item.desired, live,
                                      forced(options.self_heal, options.force, item.desired), context.ignore)
        writer.dry_runs.remember(context.environment, item.desired, stored, context.ignore)
        informer = self._known(ref)
        if informer is not None:
            informer.expect_version(str(stored["metadata"].get("resourceVersion", "")))
        return OUTCOMES[item.action]

    def _own(self, ref: ObjectRef, live: Manifest | None, environment: str) -> None:
        """Claim `ref` for `environment` before writing it; refuse when another environment has it (its ownership
        label on the live object, or a claim of this process: two environments that both create it at once)."""
        labels = ((live or {}).get("metadata") or {}).get("labels") or {}
        with self._lock:
            owner = self._owners.setdefault(ref, str(labels.get(ENVIRONMENT_LABEL) or "") or environment)
        if owner != environment:
            raise PermanentError(f"{ref}: belongs to environment {owner} (one object, one environment): not applied")

    def report_event(self, item: PlanItem, outcome: Outcome, message: str, context: ApplyContext[KubernetesOptions],
                     reason: str = "") -> None:
        self.recorder.record(self.writer(context.options).kube, item.ref, lambda: self._uid(item.ref), outcome,
                             f"{message} (revision {context.revision[:12]})", context.environment, reason)

    def report_warning(self, spec: EnvironmentSpec[KubernetesOptions], reason: str, message: str) -> None:
        ref = ObjectRef("", "ConfigMap", spec.target.namespace, ledger_name(spec.name))
        self.recorder.record(self.writer(spec.target.options).kube, ref, lambda: self._uid(ref), Outcome.FAILED,
                             message, spec.name, reason)

    def _uid(self, ref: ObjectRef) -> str:
        """The uid of `ref` for its Event: live, else of the copy we deleted."""
        uid = str(((self._cached(ref) or {}).get("metadata") or {}).get("uid", ""))
        with self._lock:
            gone = self._pruned.pop(ref, "")
        return uid or gone

    def _delete(self, writer: Writer, ref: ObjectRef, wait: float, live: Manifest | None = None) -> None:
        """Delete; with `wait` > 0, wait up to that many seconds until it is gone (finalizers)."""
        live = live if live is not None else self._cached(ref)
        answer = writer.applier.delete(ref)
        writer.dry_runs.forget(ref)
        with self._lock:
            self._owners.pop(ref, None)
        if answer is None:
            return
        uid = ((live or {}).get("metadata") or {}).get("uid") or (answer.get("metadata") or {}).get("uid") \
            or (answer.get("details") or {}).get("uid")
        if not uid:
            return
        with self._lock:
            self._pruned[ref] = uid  # its Event, written after it is gone, still names it
        informer = self._known(ref)
        if informer is not None:
            informer.expect_gone(ref.namespace, ref.name, uid)
        if wait:
            writer.applier.wait_gone(ref, uid, wait)

    def watches(self, spec: EnvironmentSpec[KubernetesOptions]) -> bool:
        """Whether every change someone else makes to the environment's objects and Ray Pods reaches `on_change`
        (the daemon's; not with Pods we may not list)."""
        return self.on_change is not None and not self._no_pods

    def load_ledger(self, spec: EnvironmentSpec[KubernetesOptions]) -> LedgerSnapshot | None:
        """The environment's ledger copy; None when there is none, or when it is unverifiable (forged, or signed
        with another key: reported once, in the log and as a Warning Event, and never obeyed)."""
        try:
            return self._ledger(spec).load()
        except Unverifiable as exc:
            if spec.name not in self._unverifiable:
                self._unverifiable.add(spec.name)
                log.error("environment %s: %s", spec.name, exc)
                self.report_warning(spec, "LedgerUnverifiable", str(exc))
            return None

    def verified_heads(self) -> list[str]:
        """The verified branch heads this cluster's ledger copies remember (signed ones only), read from the
        cluster-wide ConfigMap cache; [] when the daemon may not list ConfigMaps cluster-wide."""
        try:
            items = self._informer("ConfigMap", "").items() if "ConfigMap" not in self._namespaced else []
        except RayGitopsError:
            return []
        return [head for cm in items if (head := self._verified_head(cm))]

    def _verified_head(self, cm: Manifest) -> str:
        """The verified branch head a ConfigMap remembers when it is a signed ledger copy ("" otherwise)."""
        meta = cm.get("metadata") or {}
        name, environment = str(meta.get("name")), str((meta.get("labels") or {}).get(ENVIRONMENT_LABEL) or "")
        if name != ledger_name(environment):
            return ""
        ledger = ConfigMapLedger(self.kube, str(meta.get("namespace")), environment, self.ledger_key, lambda: cm)
        with contextlib.suppress(Unverifiable):
            if (snapshot := ledger.load()) is not None:
                return snapshot.verified
        return ""

    def save_ledger(self, spec: EnvironmentSpec[KubernetesOptions], snapshot: LedgerSnapshot) -> None:
        self._ledger(spec).save(snapshot)

    def drop_ledger(self, spec: EnvironmentSpec[KubernetesOptions]) -> None:
        self._ledger(spec).delete()
        with self._lock:
            self._ledgers.pop((spec.name, spec.target.namespace), None)

    def _ledger(self, spec: EnvironmentSpec[KubernetesOptions]) -> ConfigMapLedger:
        """The ledger ConfigMap `ray-gitops-ledger-<env>` in the environment's namespace, first read from the
        ConfigMap cache (it carries the ownership label: one LIST serves every environment), else by a GET;
        written as the environment's writer."""
        environment, namespace = spec.name, spec.target.namespace
        ref = ObjectRef("", "ConfigMap", namespace, ledger_name(environment))

        def read() -> Manifest | None:
            try:
                return self._informer("ConfigMap", namespace).get(namespace, ref.name)
            except PermanentError:
                return self.applier.get(ref)
        kube = self.writer(spec.target.options).kube
        with self._lock:
            if (environment, namespace) not in self._ledgers:
                self._ledgers[(environment, namespace)] = ConfigMapLedger(kube, namespace, environment,
                                                                          self.ledger_key, read)
            return self._ledgers[(environment, namespace)]

    def close(self, workloads: bool) -> None:
        """Write the queued Events, stop the watches and the connection (what runs on the cluster stays,
        whatever `workloads`)."""
        self.recorder.close()
        with self._lock:
            informers, self._informers = list(self._informers.values()), {}
        for informer in informers:
            informer.stop()
        if self._owns_client:
            self.api_client.close()
