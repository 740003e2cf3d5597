"""Fixtures for tests against a real kube-apiserver + etcd (envtest-style) with the KubeRay CRDs, shared by
tests/integration/kube/ and the target behaviour suite beside it."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controlplane"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "kube"))  # its kits (target_kit), for kube/kuberay/ too

import kube_controlplane

_ASSETS = pytest.StashKey[Path | kube_controlplane.ControlPlaneError]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the binaries before any test runs, so a cold build is not cut by the per-test timeout.

    A failed build does not stop the session: the kube tests then error with its message.
    """
    if not any(item.get_closest_marker("kube") for item in items):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"kube: control plane binaries from {kube_controlplane.BUILD_SCRIPT} "
            "(a cold build from Go modules takes about 10 minutes on 2 cores)"
        )
    try:
        config.stash[_ASSETS] = kube_controlplane.ensure_assets()
    except kube_controlplane.ControlPlaneError as exc:
        config.stash[_ASSETS] = exc


@pytest.fixture(scope="session")
def kube_control_plane(pytestconfig: pytest.Config) -> Iterator[kube_controlplane.ControlPlane]:
    """A running etcd + kube-apiserver on 127.0.0.1 with the KubeRay CRDs Established."""
    assets = pytestconfig.stash.get(_ASSETS, None) or kube_controlplane.ensure_assets()
    if isinstance(assets, kube_controlplane.ControlPlaneError):
        raise assets
    plane = kube_controlplane.start_control_plane(assets)
    try:
        yield plane
    finally:
        plane.cleanup()


@pytest.fixture
def kube_namespace(kube_control_plane: kube_controlplane.ControlPlane) -> Iterator[str]:
    """A fresh namespace; its deletion is requested afterwards but not awaited (no namespace controller)."""
    name = f"test-{secrets.token_hex(4)}"
    with kube_control_plane.api_client() as api_client:
        core = client.CoreV1Api(api_client)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            core.delete_namespace(name)
