"""Webhook verification: is a `POST /hooks/git` from a Git host that knows our shared secret?

Called by the daemon's HTTP handler with the request's headers and raw body; pure functions (no
I/O but `read_secret`, no logging), so one table test covers every provider. Comparisons are
constant-time; nothing here returns, logs or raises with the secret or a signature in it.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

PATH = "/hooks/git"
MAX_BODY = 1024 * 1024
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
