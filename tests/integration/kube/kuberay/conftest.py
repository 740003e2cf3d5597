"""Fixtures for tests against the real KubeRay operator (marker ``operator``).

The operator runs with kube-scheduler, kube-controller-manager and kwok on a control plane of its
own: it acts on every RayCluster it sees, and the other kube tests write RayCluster status by hand.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import kube_controlplane
import kuberay_stack
import pytest
from daemon_kit import Loop, delete_namespaces, new_loop
from kubernetes import client

_BINARIES = pytest.StashKey[Path | kube_controlplane.ControlPlaneError]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build the operator binaries before any test runs (not inside a test's timeout).

    A failed build does not stop the session: the operator tests then error with its message.
    """
    if not any(item.get_closest_marker("operator") for item in items):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"operator: KubeRay operator, kube-controller-manager, kube-scheduler and kwok from "
            f"{kuberay_stack.BUILD_SCRIPT} (a cold build from Go modules takes several minutes)"
        )
    try:
        config.stash[_BINARIES] = kuberay_stack.ensure_binaries()
    except kube_controlplane.ControlPlaneError as exc:
        config.stash[_BINARIES] = exc


@pytest.fixture(scope="session")
def kuberay(pytestconfig: pytest.Config) -> Iterator[kuberay_stack.OperatorStack]:
    """The KubeRay operator running against its own control plane, with fake nodes."""
    binaries = pytestconfig.stash.get(_BINARIES, None) or kuberay_stack.ensure_binaries()
    if isinstance(binaries, kube_controlplane.ControlPlaneError):
        raise binaries
    stack = kuberay_stack.start_operator_stack(kube_controlplane.ensure_assets(), binaries)
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(
            f"operator: stack started in {stack.startup_seconds:.1f}s; logs in {stack.workdir}"
        )
    try:
        yield stack
    finally:
        stack.cleanup()


@pytest.fixture
def kuberay_client(kuberay: kuberay_stack.OperatorStack) -> Iterator[client.ApiClient]:
    """An API client of the operator's control plane."""
    with kuberay.plane.api_client() as api_client:
        yield api_client


@pytest.fixture
def kuberay_namespace(kuberay_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace; deleted afterwards (the namespace controller removes what is left in it)."""
    name = f"kuberay-{secrets.token_hex(4)}"
    core = client.CoreV1Api(kuberay_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def loop(kuberay: kuberay_stack.OperatorStack, tmp_path: Path) -> Iterator[Loop]:
    """A repository of the environment under test and its neighbours, and the daemon on it (`daemon_kit`);
    the daemon stopped and the namespaces deleted afterwards."""
    with kuberay.plane.api_client() as api_client:
        made = new_loop(tmp_path, api_client, kuberay.plane.kubeconfig, kuberay.plane.context)
        try:
            yield made
        finally:
            try:
                made.stop()
            finally:
                delete_namespaces(made)
