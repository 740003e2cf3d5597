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
