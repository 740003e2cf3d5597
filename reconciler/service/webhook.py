"""Webhooks: is a `POST /hooks/git` from a Git host that knows our shared secret, and if so, wake
the daemon.

`verify` and `provider` are pure functions of the request's headers and raw body, so one table
test covers every provider; `Receiver` answers the HTTP server with them. Comparisons are
constant-time; nothing here returns, logs or raises with the secret or a signature in it.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from ..metrics import Metrics

log = logging.getLogger(__name__)

PATH = "/hooks/git"
PROVIDERS = ("github", "gitlab", "generic", "unknown")


@dataclass(frozen=True)
class Verdict:
    """What a request is: its provider (a metric label), whether it is authentic, whether it is a ping."""

    provider: str
    valid: bool
    ping: bool = False


def _signed(secret: bytes, body: bytes, header: str) -> bool:
    """`header` is `sha256=<hex HMAC-SHA256 of body>` under `secret`."""
    prefix, _, given = header.strip().partition("=")
    if prefix.lower() != "sha256" or not given:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, given.strip().lower().encode("utf-8", "replace"))


def provider(headers: Mapping[str, str]) -> str:
    """Who sent it, from the headers alone (a metric label, known before the body is read)."""
    h = {k.lower() for k in headers}
    if "x-hub-signature-256" in h:
        return "github" if "x-github-event" in h else "generic"
    return "gitlab" if "x-gitlab-token" in h else "generic" if "x-signature-256" in h else "unknown"


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> Verdict:
    """Check one request. GitHub: `X-Hub-Signature-256` (provider github when `X-GitHub-Event` is
    present, else generic); GitLab: `X-Gitlab-Token` equal to the secret; generic: `X-Signature-256`.
    An empty secret never verifies anything."""
    h = {k.lower(): v for k, v in headers.items()}
    key = secret.encode()
    if "x-hub-signature-256" in h:
        valid = bool(key) and _signed(key, body, h["x-hub-signature-256"])
        return Verdict(provider(h), valid, valid and h.get("x-github-event", "").strip().lower() == "ping")
    if "x-gitlab-token" in h:
        token = h["x-gitlab-token"].encode("utf-8", "replace")
        return Verdict("gitlab", bool(key) and hmac.compare_digest(key, token))
    if "x-signature-256" in h:
        return Verdict("generic", bool(key) and _signed(key, body, h["x-signature-256"]))
    return Verdict("unknown", False)


def read_secret(value: str, file: str) -> str:
    """The configured secret: the file's content (a mounted Secret, trailing newline dropped) wins
    over the literal value; "" means the webhook is disabled. Raises OSError naming only the file."""
    if file:
        return Path(file).read_text().rstrip("\r\n")
    return value


class Receiver:
    """POST /hooks/git: check the size and the signature, count the result, and on a valid push call
    `trigger` (which only wakes the daemon's loop: nothing is reconciled in the HTTP thread)."""

    def __init__(self, secret: str, max_body: int, metrics: Metrics, trigger: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.secret, self.max_body, self.metrics, self.trigger = secret, max_body, metrics, trigger
        self._clock, self._warned = clock, -math.inf  # refused requests: logged at most once a minute

    def _refused(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._warned >= 60:
            self._warned = now
            log.warning(message + " (more are counted in ray_gitops_webhook_requests_total, logged once a "
                        "minute)", *args)

    def handle(self, headers: Message, body: io.BufferedIOBase) -> tuple[int, bytes]:
        """One request: (status, response body). Reads at most `max_body` bytes."""
        try:
            length = int(headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        sender = provider(dict(headers.items()))
        if length < 0:
            self.metrics.webhook_requests.labels(sender, "bad_request").inc()
            return 411, b"Content-Length required\n"
        if length > self.max_body:
            self.metrics.webhook_requests.labels(sender, "too_large").inc()
            self._refused("webhook: %s request of %d bytes refused (limit %d)", sender, length, self.max_body)
            return 413, b"body too large\n"
        verdict = verify(self.secret, dict(headers.items()), body.read(length))
        if not verdict.valid:
            self.metrics.webhook_requests.labels(verdict.provider, "unauthorized").inc()
            self._refused("webhook: %s request with a missing or wrong signature/token refused", verdict.provider)
            return 401, b"signature or token missing or wrong\n"
        if verdict.ping:
            self.metrics.webhook_requests.labels(verdict.provider, "ping").inc()
            return 202, b"pong\n"
        self.metrics.webhook_requests.labels(verdict.provider, "accepted").inc()
        log.info("webhook: %s notification accepted: fetching now", verdict.provider)
        self.trigger()
        return 202, b"accepted: fetching now\n"
