"""Leader election options are checked up front (the elector itself is tested against the real API
server in tests/integration/kube/test_leader_elector.py)."""
from __future__ import annotations

import os
import socket

import pytest
from kubernetes import client

from reconciler.errors import ConfigError
from reconciler.kubeapi import Kube
from reconciler.service.leader import LeaderElectionOptions

KUBE = Kube(client.ApiClient(), lambda verb: None)


def test_identity_defaults_to_hostname_and_pid() -> None:
    options = LeaderElectionOptions("ray-gitops", "default", KUBE)
    assert options.identity == f"{socket.gethostname()}_{os.getpid()}"
    assert (options.lease_duration, options.renew_deadline, options.retry_period) == (15.0, 10.0, 2.0)


@pytest.mark.parametrize("timing", [
    pytest.param({"lease_duration": 10.0, "renew_deadline": 10.0}, id="lease-not-longer-than-renew-deadline"),
    pytest.param({"renew_deadline": 2.0, "retry_period": 2.0}, id="renew-deadline-within-one-jittered-retry"),
    pytest.param({"retry_period": 0.0}, id="no-retry-period"),
])
def test_inconsistent_timing_is_refused(timing: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="lease duration .* > renew deadline"):
        LeaderElectionOptions("ray-gitops", "default", KUBE, **timing)
