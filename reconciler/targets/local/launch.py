"""`ray start` for one node of a local cluster, kept on loopback: run as `python -P launch.py start ...`
(by path, so starting a node imports nothing of ray-gitops; `-P` keeps this directory off `sys.path`).

Why it exists (Ray 2.60): `ray start --node-ip-address=127.0.0.1` replaces a loopback address by the
machine's outward one (`ray._private.services.resolve_ip_for_localhost`), for the node IP and for the
GCS address a worker node joins. Ray's servers then bind that address or every interface. Ray's own
switch, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, keeps loopback as given, but it also refuses to start a
node that joins a cluster. So every node's processes run with that switch (their own `ray.init()`, job
drivers included, keep 127.0.0.1), and this process, which must let a worker node join, turns the
multi-node check back on and keeps loopback addresses as given. Nothing else of Ray is changed.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from ray._common.network_utils import is_localhost
    from ray._private import ray_constants, services
    from ray.scripts import scripts

    original = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return host if is_localhost(host) else original(host)

    ray_constants.ENABLE_RAY_CLUSTER = True  # several nodes on this one machine
    services.resolve_ip_for_localhost = keep_loopback
    sys.argv = ["ray", *argv]
    scripts.main()


if __name__ == "__main__":
    main(sys.argv[1:])
