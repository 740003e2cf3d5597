"""An environment on the real local target (real Ray processes), reconciled through the pipeline on real Git
beside two neighbours (ConfigMaps), with no daemon process: the harness of the local target's integration tests."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.pipeline.reconcile import Result
from reconciler.pipeline.source import GitSource
from reconciler.targets.local.runtime import LocalRayCluster
from reconciler.targets.local.target import LocalTarget
from tests.conftest import NEIGHBOURS, GitRemote, stop_local_clusters, write_neighbours
from tests.eventually import eventually
from tests.memory import pipeline


class LocalHarness:
    """Environment `env` (written by the test) and the neighbours, reconciled at once on each `reconcile`."""

    def __init__(self, remote: GitRemote, state: Path, env: str) -> None:
        self.remote, self.state, self.env = remote, state, env
        self.metrics = Metrics(CollectorRegistry())
        self.source = GitSource(remote.url, "main", state / "git", self.metrics.git_request)
        self.target = LocalTarget(state)
        self.reconciler = pipeline(self.source, state, self.target, self.metrics)
        write_neighbours(remote)

    def reconcile(self) -> Result:
        revision = self.source.fetch()
        with ThreadPoolExecutor(3) as pool:
            result, *neighbours = pool.map(lambda env: self.reconciler.reconcile(env, revision),
                                           (self.env, *NEIGHBOURS))
        assert result.result != "error", result.message
        assert all(n.result != "error" for n in neighbours), [n.message for n in neighbours]
        return result

    def until(self, what: str, check: Callable[[Result], bool], timeout: float = 120) -> Result:
        """Reconcile until `check` holds for the environment's result (at most `timeout` seconds)."""
        def reconciled() -> Result:
            result = self.reconcile()
            assert check(result), f"{result.health_status} {result.message}"
            return result
        return eventually(reconciled, timeout, 1, what)

    def cluster(self, name: str) -> LocalRayCluster | None:
        return LocalRayCluster.adopt(name, self.state / "local" / "clusters")

    def close(self) -> None:
        """Stop the target and, by PID, every Ray cluster it left."""
        self.target.close(workloads=True)
        stop_local_clusters(self.state)
