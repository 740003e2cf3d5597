"""A RayService's stable address on the local target: one port on 127.0.0.1 per RayService that relays each TCP
connection to the Serve HTTP proxy of its active cluster, as KubeRay's `<name>-serve-svc` Service does. A switch
after an upgrade moves the route: connections opened before it finish on the old cluster, new ones go to the new.

Owned by `LocalTarget`; opened and routed only by its `apply` and `control` (never by `observe`), closed when the
RayService is deleted and when the daemon stops (the address lives in the daemon's process). Bounded: at most
MAX_CONNECTIONS connections at once per RayService, each relayed by one thread. Bytes are passed through as they
are: the address adds no authentication and removes none (Serve's proxy asks for none).
"""
from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 64
CONNECT_TIMEOUT = 5.0
_CHUNK = 65536


class Endpoint:
    """One listening port on 127.0.0.1 and the Serve proxy port it relays to (None: refuses connections)."""

    def __init__(self, port: int = 0) -> None:
        """Listen on `port` (0: any free one); raises OSError when it is taken."""
        self._server = socket.create_server(("127.0.0.1", port))
        self._server.settimeout(0.5)
        self.port: int = self._server.getsockname()[1]
        self._upstream: int | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name=f"endpoint-{self.port}", daemon=True).start()

    def route(self, upstream: int) -> None:
        """Send new connections to the Serve proxy on 127.0.0.1:`upstream`."""
        self._upstream = upstream

    def close(self) -> None:
        """Stop listening (the port is free when this returns); connections being relayed finish on their own."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()

    def _accept(self) -> None:
        with self._server:
            while not self._closed.is_set():
                try:
                    client, _ = self._server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                upstream = self._upstream
                if upstream is None or not self._slots.acquire(blocking=False):
                    client.close()
                    continue
                threading.Thread(target=self._relay, args=(client, upstream), name=f"endpoint-{self.port}-relay",
                                 daemon=True).start()

    def _relay(self, client: socket.socket, upstream: int) -> None:
        try:
            with client, socket.create_connection(("127.0.0.1", upstream), timeout=CONNECT_TIMEOUT) as server:
                server.settimeout(None)
                client.settimeout(None)
                _pump(client, server)
        except OSError as exc:
            log.debug("endpoint %d: connection to 127.0.0.1:%d ended: %s", self.port, upstream, exc)
        finally:
            self._slots.release()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have finished sending (a half-close is passed on)."""
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        for sock in peer:
            selector.register(sock, selectors.EVENT_READ, sock)  # data: the socket, typed (fileobj is any file)
        while selector.get_map():
            for key, _ in selector.select():
                sock = key.data
                data = sock.recv(_CHUNK)
                if data:
                    peer[sock].sendall(data)
                    continue
                selector.unregister(sock)
                with contextlib.suppress(OSError):
                    peer[sock].shutdown(socket.SHUT_WR)


class Endpoints:
    """The open endpoints by (environment, RayService name); thread-safe."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Endpoint] = {}
        self._lock = threading.Lock()

    def open(self, key: tuple[str, str], port: int | None) -> Endpoint:
        """The endpoint of `key`, opened if needed on `port` (a recorded one), or on any free port if that one is
        taken (the caller records the port it got)."""
        with self._lock:
            if (endpoint := self._open.get(key)) is not None:
                return endpoint
            try:
                endpoint = Endpoint(port or 0)
            except OSError:
                log.warning("RayService %s/%s: its address 127.0.0.1:%s is taken; opening another", *key, port)
                endpoint = Endpoint(0)
            self._open[key] = endpoint
            return endpoint

    def close(self, key: tuple[str, str]) -> None:
        with self._lock:
            endpoint = self._open.pop(key, None)
        if endpoint is not None:
            endpoint.close()

    def close_all(self) -> None:
        with self._lock:
            endpoints, self._open = list(self._open.values()), {}
        for endpoint in endpoints:
            endpoint.close()
