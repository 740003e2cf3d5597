"""Notifications' pure parts: which state change is an event, how URLs are read and shown, the payloads."""
from __future__ import annotations

import pytest

from reconciler.model import SyncStatus as S
from reconciler.service.notify import Event, destination, payload, transition


@pytest.mark.parametrize("before, sync, revision, changed, event", [
    pytest.param(None, S.SYNCED, "b", True, "promoted", id="first-apply"),
    pytest.param((S.SYNCED, "a"), S.SYNCED, "b", True, "promoted", id="new-revision-applied"),
    pytest.param((S.SYNCED, "a"), S.SYNCED, "b", False, "", id="new-revision-changing-nothing-here"),
    pytest.param((S.SYNCED, "b"), S.SYNCED, "b", True, "", id="drift-corrected-same-revision"),
    pytest.param((S.SYNCED, "a"), S.FAILED, "", False, "failed", id="failed"),
    pytest.param((S.FAILED, "a"), S.FAILED, "", False, "", id="still-failed"),
    pytest.param((S.FAILED, "a"), S.SYNCED, "a", False, "recovered", id="recovered"),
    pytest.param((S.SYNCED, "a"), S.WAITING, "a", False, "waiting", id="waiting"),
    pytest.param((S.WAITING, "a"), S.SYNCED, "b", True, "promoted", id="gate-opened"),
    pytest.param((S.SYNCED, "a"), S.REMOVED, "c", True, "removed", id="removed"),
    pytest.param((S.SYNCED, "a"), S.UNVERIFIED, "a", False, "unverified", id="unverified"),
    pytest.param((S.SYNCED, "a"), S.STALE, "a", False, "", id="stale-is-not-an-event"),
])
def test_transitions(before, sync, revision, changed, event) -> None:
    assert transition(before, sync, revision, changed) == event


def test_urls_pick_slacks_format_by_host_or_prefix_and_show_only_scheme_and_host() -> None:
    hook = destination("https://hooks.slack.com/services/T0/B0/secret")
    assert hook.slack and hook.shown == "https://hooks.slack.com" and "secret" not in repr(hook)
    proxied = destination("slack+https://user:pw@chat.example:8443/hooks/secret")
    assert proxied.slack and proxied.url == "https://user:pw@chat.example:8443/hooks/secret"
    assert proxied.shown == "slack+https://chat.example:8443"
    assert not destination("http://127.0.0.1:9/x?token=secret").slack
    with pytest.raises(ValueError) as bad:
        destination("ftp://user:secret@host/secret")
    assert "secret" not in str(bad.value)


def test_slack_text_escapes_what_git_authors_wrote() -> None:
    event = Event("failed", "dev", "Failed", "Degraded", "a" * 40, "a" * 40, "b" * 40, "<b>bad</b> & worse\nmore",
                  0.0, "repo", "main")
    assert payload(event, slack=True) == {"text": f"ray-gitops: environment *dev* failed at {'a' * 12} (head "
                                          f"{'b' * 12} not applied) (Failed, Degraded; repo main)\n"
                                          "&lt;b&gt;bad&lt;/b&gt; &amp; worse"}
    assert payload(event, slack=False)["message"] == "<b>bad</b> & worse\nmore"
