"""Settings precedence: flags > RAY_GITOPS_* > config file > defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ConfigError
from reconciler.service.config import load


def test_flags_beat_environment_which_beats_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("repo: /from/file\ninterval: 1m\nbranch: file\nmetrics-address: 0.0.0.0:1\n")
    env = {"RAY_GITOPS_INTERVAL": "10s", "RAY_GITOPS_BRANCH": "env"}

    settings = load({"branch": "flag", "environments": []}, env, cfg)

    assert (settings.repo, settings.interval, settings.branch) == ("/from/file", 10.0, "flag")
    assert settings.host_port == ("0.0.0.0", 1)


def test_unknown_config_key_names_the_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("repository: x\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown setting 'repository'"):
        load({}, {}, cfg)


def test_leader_election_settings_come_from_flags_and_environment(tmp_path: Path) -> None:
    env = {"RAY_GITOPS_LEADER_ELECTION": "true", "RAY_GITOPS_LEADER_ELECTION_RETRY_PERIOD": "500ms",
           "RAY_GITOPS_KUBECONFIG": "/kube/config"}

    settings = load({"leader_election_namespace": "ray-system", "leader_election_lease_duration": "3s"}, env)

    assert settings.leader_election is True
    assert (settings.leader_election_namespace, settings.leader_election_id) == ("ray-system", "ray-gitops")
    assert (settings.leader_election_lease_duration, settings.leader_election_renew_deadline,
            settings.leader_election_retry_period) == (3.0, 10.0, 0.5)
    assert (settings.kubeconfig, settings.kube_context) == ("/kube/config", "")
    assert load({}, {}).leader_election is False


def test_shards_come_from_flags_and_environment_and_exclude_leader_election() -> None:
    assert load({"shards": "12"}, {"RAY_GITOPS_SHARDS": "3"}).shards == 12
    assert load({}, {"RAY_GITOPS_SHARDS": "3"}).shards == 3
    assert load({}, {}).shards == 0
    with pytest.raises(ConfigError, match="setting shards: .*>= 0"):
        load({"shards": "-1"}, {})
    with pytest.raises(ConfigError, match="shards and leader_election exclude each other"):
        load({"shards": "4", "leader_election": True}, {})
