"""The one Kubernetes access layer: an ApiClient from a kubeconfig context or the in-cluster service
account, and `Kube`, the one place every API request goes through (counted by verb, rate-limited,
optionally impersonating a tenant), with one error type, `ApiError`.

Used by every module of the Kubernetes target. Requests and answers are plain JSON dicts (no
generated models: one code path for custom resources and core kinds alike). It knows paths (from the
kind table, `kuberay.KINDS`) and HTTP, nothing about plans.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3
from kubernetes import client, config

from .errors import PermanentError, RayGitopsError
from .kuberay import KINDS
from .model import ObjectRef

APPLY_PATCH = "application/apply-patch+yaml"
JSON = "application/json"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: `/apis/ray.io/v1/namespaces/<ns>/rayclusters`."""

    group: str
    kind: str
    prefix: str
    plural: str

    def collection(self, namespace: str = "") -> str:
        """The namespace's collection, or with "" the cluster-wide one."""
        return f"{self.prefix}/namespaces/{namespace}/{self.plural}" if namespace else f"{self.prefix}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


def _resource(kind: str, api_version: str, plural: str) -> Resource:
    group = api_version.rpartition("/")[0]
    return Resource(group, kind, f"/apis/{api_version}" if group else f"/api/{api_version}", plural)


RESOURCES = {r.kind: r for r in (
    *(_resource(k.name, k.api_version, k.plural) for k in KINDS.values()),
    _resource("Pod", "v1", "pods"),  # read only: the Ray Pods behind a cluster's health
)}


def resource(ref: ObjectRef) -> Resource:
    """The API resource of `ref` (PermanentError for a kind the target does not manage)."""
    found = RESOURCES.get(ref.kind)
    if found is None or found.kind not in KINDS or found.group != ref.group:
        raise PermanentError(f"{ref}: the Kubernetes target does not manage {ref.group or 'core'}/{ref.kind}")
    return found


class ApiError(RayGitopsError):
    """A failed request: HTTP status (0: no answer), reason, message and the server's causes."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body or {}

    @classmethod
    def of(cls, status: int, data: bytes) -> ApiError:
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = body.get("message") or data[:500].decode(errors="replace")
        return cls(status, str(body.get("reason") or ""), str(message), body)

    @property
    def causes(self) -> list[dict[str, str]]:
        return list((self.body.get("details") or {}).get("causes") or [])

    @property
    def field_conflict(self) -> bool:
        """409 from server-side apply: another field manager owns a field we set to another value."""
        return self.status == 409 and any(c.get("reason") == "FieldManagerConflict" for c in self.causes)

    @property
    def stale(self) -> bool:
        """409 from a resourceVersion precondition: the object changed since it was read."""
        return self.status == 409 and not self.field_conflict

    def conflicts(self) -> list[tuple[str, str]]:
        """(manager, field) of each field conflict, e.g. ("autoscaler", ".spec.workerGroupSpecs")."""
        out = []
        for cause in self.causes:
            if cause.get("reason") == "FieldManagerConflict":
                match = re.search(r'conflict with "([^"]*)"', cause.get("message", ""))
                out.append((match.group(1) if match else cause.get("message", "?"), cause.get("field", "?")))
        return out


RETRIES = 3  # more attempts of a request the server asked to retry later
RETRY_AFTER_MAX = 5.0  # seconds: the longest Retry-After honoured as such


def retry_after(status: int, header: str | None) -> float | None:
    """Seconds to wait before sending a request again, or None when the answer is final: 429 (1 s unless the
    server says), or a 5xx whose Retry-After says when."""
    try:
        asked = float(header) if header else None
    except ValueError:
        asked = None
    if status == 429:
        return min(RETRY_AFTER_MAX, max(0.0, asked if asked is not None else 1.0))
    if status >= 500 and asked is not None:
        return min(RETRY_AFTER_MAX, max(0.0, asked))
    return None


POOL_SIZE = 32  # kept-alive connections per API server: the watches plus the environment threads


def connect(kubeconfig: str = "", context: str = "", in_cluster: bool = False) -> client.ApiClient:
    """An ApiClient: the pod's service account with `in_cluster`, else a kubeconfig (`kubeconfig`, else
    $KUBECONFIG, else ~/.kube/config) and its `context` (else the current one). A missing or broken
    kubeconfig, or an unknown context, is a PermanentError naming it."""
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig or None, context=context or None,
                                    client_configuration=configuration, persist_config=False)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = "in-cluster config" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}" + (
            f" context {context}" if context else "")
        raise PermanentError(f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    configuration.connection_pool_maxsize = POOL_SIZE
    configuration.retries = urllib3.Retry(3, respect_retry_after_header=False)  # Retry-After: `Kube.request`'s
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook = ThrottledRefresh(configuration.refresh_api_key_hook)
    return client.ApiClient(configuration)


class ThrottledRefresh:
    """The kubeconfig loader's credential refresh, at most once a second instead of before every request.
    The loader's hook re-reads host, proxy and TLS settings each time (about 2 ms of CPU, measured) and
    then installs a new hook of its own; an expiring token only needs a refresh now and then."""

    def __init__(self, hook: Callable[[client.Configuration], None], every: float = 1.0) -> None:
        self.hook, self.every, self._last = hook, every, -every
        self._lock = threading.Lock()

    def __call__(self, configuration: client.Configuration) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                return
            self._last = now
            self.hook(configuration)
            if configuration.refresh_api_key_hook is not self:  # the loader put its new hook in place
                # the client types the hook as None, its default: it is a callable once set
                self.hook, configuration.refresh_api_key_hook = configuration.refresh_api_key_hook, self  # type: ignore[assignment]


class RateLimiter:
    """Client-side rate limit, a token bucket as client-go's: `qps` requests per second on average, bursts
    of up to `burst`. Thread-safe; each caller waits for its own turn. `qps <= 0` means unlimited."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.qps, self.burst, self._clock, self._sleep = qps, max(1, burst), clock, sleep
        self._tokens, self._last = float(self.burst), clock()
        self._lock = threading.Lock()

    def twin(self) -> RateLimiter:
        """A limiter with the same rate and burst and tokens of its own."""
        return RateLimiter(self.qps, self.burst, self._clock, self._sleep)

    def wait(self) -> float:
        """Take one token, sleeping until it is there; the seconds waited."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0  # reserved now, possibly ahead of time: later callers wait behind it
            delay = max(0.0, -self._tokens / self.qps)
        if delay:
            self._sleep(delay)
        return delay


class Kube:
    """JSON requests to the API server; `count(verb)` is called once per request, after `limiter`. With
    `impersonate`, every request acts as that user (`Impersonate-User`), e.g. a tenant's service account."""

    def __init__(self, api_client: client.ApiClient, count: Callable[[str], None],
                 limiter: RateLimiter | None = None, impersonate: str = "") -> None:
        self.api_client, self.count = api_client, count
        self.limiter = limiter or RateLimiter(0, 1)
        self.impersonate = impersonate
        # Requests go straight to the client's urllib3 pool (its TLS, proxy and retry settings): the generated
        # client's serialization layers cost a tenth of a first sync's CPU and add nothing to plain JSON.
        self._pool = api_client.rest_client.pool_manager

    def acting_as(self, user: str) -> Kube:
        """The same connection, rate limit and counting, acting as `user` ("" = as itself)."""
        return self if user == self.impersonate else Kube(self.api_client, self.count, self.limiter, user)

    def limited_by(self, limiter: RateLimiter) -> Kube:
        """The same connection, identity and counting, under another rate limit."""
        return self if limiter is self.limiter else Kube(self.api_client, self.count, limiter, self.impersonate)

    def request(self, verb: str, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                body: Any = None, content_type: str = JSON, timeout: Any = 60.0,
                stream: bool = False) -> Any:
        """Send one request; the decoded JSON answer (or, with `stream`, the open urllib3 response). An answer
        that says when to come back (429 from API Priority and Fairness, a 5xx with Retry-After) is retried as
        client-go does: up to RETRIES times, after what it asks (at most RETRY_AFTER_MAX seconds)."""
        configuration = self.api_client.configuration
        headers = {**self.api_client.default_headers, "Accept": JSON,
                   **({"Content-Type": content_type} if body is not None else {}),
                   **({"Impersonate-User": self.impersonate} if self.impersonate else {})}
        for auth in configuration.auth_settings().values():  # the bearer token, refreshed by its hook
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        url = configuration.host + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        limit = urllib3.Timeout(connect=timeout[0], read=timeout[1]) if isinstance(timeout, tuple) \
            else urllib3.Timeout(total=timeout)
        attempt = 0
        while True:
            self.limiter.wait()
            self.count(verb)
            try:
                response = self._pool.urlopen(method, url, body=data, headers=headers, timeout=limit,
                                              preload_content=not stream)
                if stream and 200 <= response.status <= 299:
                    return response
                answer = response.data
                if stream:
                    response.release_conn()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise ApiError(0, "Unavailable", f"{method} {path}: {exc}") from exc
            if 200 <= response.status <= 299:
                return json.loads(answer) if answer else {}
            wait = retry_after(response.status, response.headers.get("Retry-After"))
            if wait is None or attempt == RETRIES:
                raise ApiError.of(response.status, answer)
            attempt += 1
            time.sleep(wait)

    def get(self, path: str, timeout: float = 60.0) -> dict[str, Any] | None:
        """The object, or None when it does not exist (404)."""
        return self._present(lambda: self.request("get", "GET", path, timeout=timeout))

    def list(self, path: str, selector: str = "") -> dict[str, Any]:
        return self.request("list", "GET", path, [("labelSelector", selector)] if selector else [])

    def watch(self, path: str, resource_version: str, selector: str = "",
              seconds: int = 300) -> urllib3.BaseHTTPResponse:
        """An open watch stream from `resource_version` (the server ends it after `seconds`)."""
        query: list[tuple[str, Any]] = [("watch", "true"), ("resourceVersion", resource_version),
                                        ("allowWatchBookmarks", "true"), ("timeoutSeconds", seconds)]
        if selector:
            query.append(("labelSelector", selector))
        return self.request("watch", "GET", path, query, timeout=(10.0, seconds + 30.0), stream=True)

    def apply(self, path: str, body: dict[str, Any], manager: str, force: bool = False,
              dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply (PATCH application/apply-patch+yaml); the object as stored (or as it would be)."""
        query: list[tuple[str, Any]] = [("fieldManager", manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("dryrun-apply" if dry_run else "apply", "PATCH", path, query, body, APPLY_PATCH)

    def delete(self, path: str, propagation: str = "Background") -> dict[str, Any] | None:
        """Delete; the server's answer, or None when it was already gone (404)."""
        return self._present(lambda: self.request("delete", "DELETE", path, [("propagationPolicy", propagation)]))

    @staticmethod
    def _present(call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
