"""Reading HTTP request heads without a thread per connection, for the daemon's HTTP server (`http.py`).

One thread watches every accepted connection until its request head (request line and headers) is in, then
hands the connection on with the bytes read so far. A head must be in within `deadline` seconds of the
accept, however it trickles; at most `most` connections wait at once, and one more closes the oldest. So a
slow client holds a socket, never one of the server's threads, and a quick request is handed on at once.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
LARGEST = 65536 + 64 * 1024  # bytes read ahead at most: http.server refuses longer request lines and heads itself


@dataclass
class _Waiting:
    address: Any
    since: float  # monotonic time of the accept
    head: bytearray = field(default_factory=bytearray)


class HeadReader:
    """Calls `ready(connection, address, head)` (on its own thread) for each connection whose head is in;
    closes the others at their deadline."""

    def __init__(self, ready: Callable[[socket.socket, Any, bytes], None], deadline: float, most: int) -> None:
        self._ready, self._deadline, self._most = ready, deadline, most
        self._selector = selectors.DefaultSelector()
        self._wake, self._waker = socket.socketpair()
        self._waker.setblocking(False)
        self._selector.register(self._wake, selectors.EVENT_READ)
        self._lock = threading.Lock()
        self._new: list[tuple[socket.socket, Any, float]] = []  # accepted, not yet watched
        self._waiting: dict[socket.socket, _Waiting] = {}  # only the reader's thread touches it
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="http-heads", daemon=True)
        self._thread.start()

    def add(self, connection: socket.socket, address: Any) -> None:
        """Watch a connection just accepted (from the accepting thread)."""
        with self._lock:
            self._new.append((connection, address, time.monotonic()))
        self._nudge()

    def stop(self) -> None:
        """End the thread and close every connection still waiting."""
        self._stopping = True
        self._nudge()
        self._thread.join(5)

    def _nudge(self) -> None:
        try:
            self._waker.send(b"\0")
        except OSError:  # full (the thread has wake-ups to read already) or closed (stopped)
            pass

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(timeout=0.25):
                    if key.fileobj is self._wake:
                        self._wake.recv(4096)
                        self._watch()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        finally:
            with self._lock:
                new, self._new = self._new, []
            for connection in [*self._waiting, *(c for c, _, _ in new)]:
                connection.close()
            self._selector.close()
            self._wake.close()
            self._waker.close()

    def _watch(self) -> None:
        with self._lock:
            new, self._new = self._new, []
        for connection, address, since in new:
            connection.setblocking(False)
            waiting = _Waiting(address, since)
            arrived = self._arrived(connection, waiting)  # a quick client's head is often in already
            if arrived is not None:
                self._done(connection, waiting, arrived)
                continue
            if len(self._waiting) >= self._most:
                log.debug("http: %d connections sending their request head; closing the oldest", self._most)
                self._close(min(self._waiting, key=lambda c: self._waiting[c].since))
            self._waiting[connection] = waiting
            self._selector.register(connection, selectors.EVENT_READ)

    def _read(self, connection: socket.socket) -> None:
        waiting = self._waiting.get(connection)
        if waiting is None:  # closed as the oldest after this round of select began
            return
        arrived = self._arrived(connection, waiting)
        if arrived is not None:
            self._selector.unregister(connection)
            del self._waiting[connection]
            self._done(connection, waiting, arrived)

    def _arrived(self, connection: socket.socket, waiting: _Waiting) -> bool | None:
        """Read what the connection sent: True once its head is in, False if it is gone, None while it trickles."""
        try:
            data = connection.recv(LARGEST - len(waiting.head))
        except BlockingIOError:
            return None
        except OSError:  # reset by the client
            return False
        if not data:
            return False
        waiting.head += data
        return True if b"\r\n\r\n" in waiting.head or b"\n\n" in waiting.head or len(waiting.head) >= LARGEST else None

    def _done(self, connection: socket.socket, waiting: _Waiting, arrived: bool) -> None:
        """Hand a connection whose head is in to the server; close one that is gone."""
        if not arrived:
            connection.close()
            return
        connection.setblocking(True)
        try:
            self._ready(connection, waiting.address, bytes(waiting.head))
        except Exception:  # no thread to be had: this connection goes, the reader stays
            log.exception("http: could not serve a connection")
            connection.close()

    def _expire(self) -> None:
        now = time.monotonic()
        late = [c for c, waiting in self._waiting.items() if now - waiting.since > self._deadline]
        for connection in late:
            self._close(connection)
        if late:
            log.debug("http: closed %d connection(s) whose request head took more than %g s", len(late),
                      self._deadline)

    def _close(self, connection: socket.socket) -> None:
        self._selector.unregister(connection)
        del self._waiting[connection]
        connection.close()
