"""Webhook verification, one table for every provider (pure functions: headers + raw body in, verdict out)."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from reconciler.service.webhook import Verdict, read_secret, verify

SECRET = "s3cret"
BODY = b'{"ref": "refs/heads/main"}'


def sign(body: bytes = BODY, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("secret, headers, expected", [
    pytest.param(SECRET, {"X-Hub-Signature-256": sign(), "X-GitHub-Event": "push"}, Verdict("github", True),
                 id="github-good"),
    pytest.param(SECRET, {"x-hub-signature-256": sign().upper().replace("SHA256=", "sha256="),
                          "x-github-event": "push"}, Verdict("github", True), id="github-headers-any-case"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign(secret="other"), "X-GitHub-Event": "push"},
                 Verdict("github", False), id="github-wrong-secret"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign(b"tampered"), "X-GitHub-Event": "push"},
                 Verdict("github", False), id="github-body-changed"),
    pytest.param(SECRET, {"X-GitHub-Event": "push"}, Verdict("unknown", False), id="github-signature-missing"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign(), "X-GitHub-Event": "ping"}, Verdict("github", True, True),
                 id="github-ping"),
    pytest.param(SECRET, {"X-Hub-Signature-256": "bad", "X-GitHub-Event": "ping"}, Verdict("github", False),
                 id="github-unsigned-ping-is-refused"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign().replace("sha256=", "sha1=")}, Verdict("generic", False),
                 id="wrong-prefix"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign().replace("sha256=", "")}, Verdict("generic", False),
                 id="no-prefix"),
    pytest.param(SECRET, {"X-Gitlab-Token": SECRET}, Verdict("gitlab", True), id="gitlab-good"),
    pytest.param(SECRET, {"X-Gitlab-Token": "s3cre"}, Verdict("gitlab", False), id="gitlab-bad"),
    pytest.param(SECRET, {"X-Gitlab-Token": "sé"}, Verdict("gitlab", False), id="gitlab-non-ascii"),
    pytest.param(SECRET, {"X-Signature-256": sign()}, Verdict("generic", True), id="generic-good"),
    pytest.param(SECRET, {"X-Hub-Signature-256": sign()}, Verdict("generic", True), id="generic-github-form"),
    pytest.param(SECRET, {"X-Signature-256": sign(secret="x")}, Verdict("generic", False), id="generic-bad"),
    pytest.param("", {"X-Hub-Signature-256": sign(secret=""), "X-GitHub-Event": "push"}, Verdict("github", False),
                 id="empty-secret-never-verifies-hmac"),
    pytest.param("", {"X-Gitlab-Token": ""}, Verdict("gitlab", False), id="empty-secret-never-verifies-token"),
])
def test_signatures_are_checked_per_provider(secret: str, headers: dict[str, str], expected: Verdict) -> None:
    assert verify(secret, headers, BODY) == expected


def test_secret_file_wins_and_loses_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    assert read_secret("literal", str(tmp_path / "secret")) == "from-file"
    assert read_secret("literal", "") == "literal"
    with pytest.raises(OSError):
        read_secret("", str(tmp_path / "missing"))


def test_refused_requests_are_counted_each_and_logged_at_most_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    import io
    from email.message import Message

    from prometheus_client import CollectorRegistry

    from reconciler.metrics import Metrics
    from reconciler.service.webhook import Receiver
    now = [0.0]
    metrics = Metrics(CollectorRegistry())
    receiver = Receiver(SECRET, 1024, metrics, lambda: None, clock=lambda: now[0])
    headers = Message()
    headers["X-Hub-Signature-256"], headers["Content-Length"] = sign(secret="wrong"), str(len(BODY))
    for step in (0, 10, 59, 61, 62):
        now[0] = step
        assert receiver.handle(headers, io.BytesIO(BODY))[0] == 401

    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert metrics.registry.get_sample_value("ray_gitops_webhook_requests_total",
                                             {"provider": "generic", "result": "unauthorized"}) == 5
