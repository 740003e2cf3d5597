"""The loop: poll Git, schedule one reconcile per environment, serve /metrics /healthz /readyz.

Started by `ray-gitops run`. Environments run in parallel threads, each with its own interval and
error backoff, so a slow or broken one never holds the others. On stop it finishes the current
steps, then closes the targets (the local target stops the Ray processes it started).
With leader election on, only the replica holding the Lease fetches and reconciles; a follower
serves /metrics, /healthz and a 200 /readyz (it stands by: a rolling update can proceed), and a
leader that loses the Lease schedules nothing new while its running reconciles finish.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from . import webhook
from .config import Settings
from .errors import PermanentError, ReconcileError
from .leader import LeaderElectionOptions, LeaderElector, connect
from .ledger import Ledger
from .metrics import Metrics
from .model import EnvironmentSpec
from .reconcile import EnvironmentReconciler, Result, TargetFactory
from .render import ROOT, list_environments
from .source import GitSource, Revision
from .targets.base import Target

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0


def build_target(spec: EnvironmentSpec, settings: Settings, metrics: Metrics) -> Target:
    """The target an environment asks for (each imported only when used: `local` needs ray[default])."""
    if spec.target.kind == "local":
        from .targets.local import LocalTarget
        return LocalTarget(settings.state_dir)
    if spec.target.kind == "kubernetes":
        from .targets.kubernetes import KubernetesTarget
        from .targets.kubernetes.client import RateLimiter
        return KubernetesTarget(spec.target.options, metrics,
                                limiter=RateLimiter(settings.kube_api_qps, settings.kube_api_burst))
    raise PermanentError(f"environment {spec.name}: unknown target {spec.target.kind}")


class Daemon:
    """One Git source, its environments, their targets, and the HTTP endpoints.

    Thread ownership: the main loop (`serve`/`run_once`) owns the scheduling state and is the only
    caller of `source.fetch`; at most `settings.concurrency` environment threads reconcile at once,
    each environment in one thread at a time, reading only the fetched revision's immutable snapshot.
    The HTTP thread reads only thread-safe state (the metrics registry, Events, sets it copies).
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, process=registry is None)
        self.ledger = Ledger(settings.state_dir)
        self.source = GitSource(settings.repo, settings.branch, settings.state_dir / "git", self.metrics.git_request)
        self.targets = TargetFactory(lambda spec: build_target(spec, settings, self.metrics))
        self.stopping = threading.Event()
        self.reconciler = self._reconciler()
        self.wake = threading.Event()
        self.webhook_secret = self._webhook_secret()  # "" = /hooks/git disabled
        self._force = threading.Event()  # a webhook asked: fetch now, reconcile every environment
        self._forced: set[str] = set()  # environments the next schedule runs whatever their interval
        self._heartbeat = time.monotonic()
        self._done: set[str] = set()
        self._selected: list[str] = []
        self._listed = ""  # the revision whose environments were last listed (and logged)
        self._due: dict[str, tuple[str, float]] = {}  # env -> (revision reconciled, next time)
        self._failures: dict[str, int] = {}
        self._running: dict[str, Future[Result]] = {}
        self.elector = self._elector() if settings.leader_election and not settings.once else None
        self._led = False  # leading at the last turn of the loop

    def _reconciler(self) -> EnvironmentReconciler:
        return EnvironmentReconciler(self.source, self.ledger, self.metrics, self.targets, stopping=self.stopping)

    def _elector(self) -> LeaderElector:
        s = self.settings
        try:
            options = LeaderElectionOptions(s.leader_election_id, s.leader_election_namespace,
                                            connect(s.kubeconfig, s.kube_context),
                                            lease_duration=s.leader_election_lease_duration,
                                            renew_deadline=s.leader_election_renew_deadline,
                                            retry_period=s.leader_election_retry_period)
        except Exception as exc:  # no kubeconfig, unknown context, inconsistent timing
            raise PermanentError(f"leader election: {exc}") from exc
        gauge = self.metrics.leader.labels(options.identity)
        gauge.set(0)

        def changed(leading: bool) -> None:
            gauge.set(float(leading))
            self.wake.set()
        return LeaderElector(options, changed)

    def _webhook_secret(self) -> str:
        try:
            return webhook.read_secret(self.settings.webhook_secret, self.settings.webhook_secret_file)
        except OSError as exc:
            raise PermanentError(f"webhook_secret_file {self.settings.webhook_secret_file}: {exc.strerror}") from None

    def trigger(self) -> None:
        """Git changed (a verified webhook): fetch at once and reconcile every environment, whatever its
        interval. Only wakes the loop: nothing is reconciled in the caller's (HTTP) thread."""
        self._force.set()
        self.wake.set()

    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def _lead(self) -> bool:
        """This turn's leadership. A new term starts with a fresh reconciler, so each environment
        adopts again the ledger its target keeps (another leader may have written it); a lost term
        cancels the reconciles still queued (running ones finish)."""
        leading = self.leading()
        if leading and not self._led and self.elector is not None:
            self.reconciler = self._reconciler()
        if not leading:
            for future in self._running.values():
                future.cancel()
        self._led = leading
        return leading

    # -- scheduling ----------------------------------------------------------------------------------
    def environments(self, revision: Revision) -> list[str]:
        """The environments to reconcile at `revision`; problems outside them are logged once per revision."""
        found = list_environments(revision.tree)
        wanted = list(self.settings.environments) or found
        if revision.sha != self._listed:
            self._listed = revision.sha
            for name in wanted:
                if name not in found:
                    log.error("environment %s: not found under environments/ at revision %s", name, revision.short)
            for path, reason in revision.tree.problems(ROOT):
                if path.count("/") < 2 or path.split("/")[1] not in found:
                    log.error("%s: %s (revision %s; ignored)", path, reason, revision.short)
        return wanted

    def _finished(self, name: str, revision: Revision, future: Future[Result]) -> None:
        if future.cancelled():
            return
        result = future.result()
        failures = self._failures[name] = self._failures.get(name, 0) + 1 if result.result == "error" else 0
        delay = (result.retry_after or min(MAX_BACKOFF, 5.0 * 2 ** (failures - 1))) if failures else result.interval
        self._due[name] = (revision.sha, time.monotonic() + delay)
        self._done.add(name)
        if name in self._forced:  # a webhook came while it ran: run it again now
            self.wake.set()

    def _schedule(self, pool: ThreadPoolExecutor, revision: Revision, force: bool = False) -> None:
        self._selected = self.environments(revision)
        if force:
            self._forced.update(self._selected)
        for name in self._selected:
            running = self._running.get(name)
            if running is not None and not running.done():
                continue
            done_sha, next_time = self._due.get(name, ("", 0.0))
            if done_sha == revision.sha and time.monotonic() < next_time and name not in self._forced:
                continue
            if not self.leading():
                return
            self._forced.discard(name)
            future = pool.submit(self.reconciler.reconcile, name, revision)
            future.add_done_callback(lambda f, n=name, r=revision: self._finished(n, r, f))
            self._running[name] = future

    def run_once(self) -> bool:
        """Reconcile every selected environment once; True only if all succeeded."""
        revision = self.source.fetch()
        names = self.environments(revision)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="env") as pool:
            results = list(pool.map(lambda n: self.reconciler.reconcile(n, revision), names))
        for result in results:
            log.info("environment %s: %s, sync %s, health %s", result.environment, result.result,
                     result.sync_status, result.health_status)
        return bool(names) and all(r.result != "error" for r in results)

    def serve(self) -> None:
        """Run until `stop()`: poll Git every `interval`, reconcile what is due (only while leading)."""
        server = self._start_http()
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="env")
        if self.elector is not None:
            self.elector.start()
        try:
            while not self.stopping.is_set():
                self._heartbeat = time.monotonic()
                self.wake.clear()
                force = self._force.is_set()
                self._force.clear()  # a webhook from now on is after this fetch: it wakes the next turn
                leading = self._lead()
                if leading:
                    self._turn(pool, force)
                self.wake.wait(self._until_next() if leading else self.settings.interval)
        finally:
            log.info("stopping: finishing the current steps")
            pool.shutdown(wait=True, cancel_futures=True)
            self.targets.close()
            if self.elector is not None:  # after the last reconcile: the next leader never overlaps it
                self.elector.stop(release=True)
            server.shutdown()
            server.server_close()
            log.info("stopped")

    def _turn(self, pool: ThreadPoolExecutor, force: bool) -> None:
        """Fetch and schedule. A change in fetching (failing, or working again) re-reports every environment
        at once. Nothing here may end the loop: repository content and Git failures are only logged."""
        failing = self.source.failure is not None
        try:
            revision = self.source.fetch()
            force = force or failing != (self.source.failure is not None)
            self._schedule(pool, revision, force)
        except ReconcileError as exc:  # no revision yet: the source logged it; retried next turn
            log.debug("%s", exc)
        except Exception:  # a bug must not stop the other environments' schedule
            log.exception("scheduling failed; retrying next turn")

    def _until_next(self) -> float:
        """Seconds to sleep: the Git poll interval, or less when an environment is due sooner."""
        soonest = min((t for _, t in self._due.values()), default=float("inf")) - time.monotonic()
        return max(0.2, min(self.settings.interval, soonest))

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    # -- HTTP ----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """After the first reconcile of every environment; a follower is ready as it is (standing by)."""
        if not self.leading():
            return True
        return bool(self._selected) and set(self._selected) <= self._done

    def healthy(self) -> bool:
        return time.monotonic() - self._heartbeat < 3 * self.settings.interval + 60

    def _start_http(self) -> ThreadingHTTPServer:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/metrics":
                    self._send(200, generate_latest(daemon.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    ok = daemon.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
                elif self.path == "/readyz":
                    ok = daemon.ready()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"first reconcile not done\n")
                else:
                    self._other()

            def do_POST(self) -> None:  # noqa: N802
                if self.path.split("?")[0] != webhook.PATH or not daemon.webhook_secret:
                    self._send(404, b"not found\n")
                    return
                code, body = daemon.hook(self.headers, self.rfile)
                self._send(code, body)

            def _other(self) -> None:
                if self.path.split("?")[0] == webhook.PATH and daemon.webhook_secret:
                    self._send(405, b"use POST\n", allow="POST")
                else:
                    self._send(404, b"not found\n")

            do_PUT = do_DELETE = do_PATCH = _other  # noqa: N815

            def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                      allow: str = "") -> None:
                self.send_response(code)
                if allow:
                    self.send_header("Allow", allow)
                if code == 413:  # the body was left unread: this connection cannot carry another request
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(self.settings.host_port, Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        log.info("serving /metrics /healthz /readyz%s on http://%s:%d",
                 " " + webhook.PATH if self.webhook_secret else "", *server.server_address[:2])
        return server

    def hook(self, headers: Message, body: BinaryIO) -> tuple[int, bytes]:
        """One POST /hooks/git: (status, response body). Reads at most `webhook_max_body` bytes."""
        try:
            length = int(headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        provider = webhook.provider(dict(headers.items()))
        if length < 0:
            self.metrics.webhook_requests.labels(provider, "bad_request").inc()
            return 411, b"Content-Length required\n"
        if length > self.settings.webhook_max_body:
            self.metrics.webhook_requests.labels(provider, "too_large").inc()
            log.warning("webhook: %s request of %d bytes refused (limit %d)", provider, length,
                        self.settings.webhook_max_body)
            return 413, b"body too large\n"
        verdict = webhook.verify(self.webhook_secret, dict(headers.items()), body.read(length))
        if not verdict.valid:
            self.metrics.webhook_requests.labels(verdict.provider, "unauthorized").inc()
            log.warning("webhook: %s request with a missing or wrong signature/token refused", verdict.provider)
            return 401, b"signature or token missing or wrong\n"
        if verdict.ping:
            self.metrics.webhook_requests.labels(verdict.provider, "ping").inc()
            return 202, b"pong\n"
        self.metrics.webhook_requests.labels(verdict.provider, "accepted").inc()
        log.info("webhook: %s notification accepted: fetching now", verdict.provider)
        self.trigger()
        return 202, b"accepted: fetching now\n"
