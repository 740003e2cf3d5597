"""Imported first by every Python worker of a local cluster (Ray's own `preload_python_modules`, set by
`nodes.node_environment`), so that a worker's gRPC server stays on loopback. A Ray Serve replica opens its
inter-deployment gRPC server on every interface (Ray 2.60: `add_port_to_grpc_server(server, "[::]:0")` in
`ray/serve/_private/replica.py`); the address it gives to its callers is its node's IP, 127.0.0.1 here, so
127.0.0.1 serves them all. A top-level module in a directory of its own (on the nodes' PYTHONPATH, where it
exposes only this name), importing nothing of ray-gitops. Nothing else of Ray is changed.
"""
from __future__ import annotations

from typing import Any

from ray._common import tls_utils

_add_port = tls_utils.add_port_to_grpc_server
_EVERY_INTERFACE = ("[::]", "0.0.0.0", "")


def _on_loopback(server: Any, address: str) -> int:
    host, _, port = address.rpartition(":")
    return _add_port(server, f"127.0.0.1:{port}" if host in _EVERY_INTERFACE else address)


tls_utils.add_port_to_grpc_server = _on_loopback
