"""The daemon's control socket, `<state-dir>/control.sock` (mode 0600, and only the daemon's own user is
answered): `ray-gitops reconcile` asks the running daemon to fetch Git and reconcile now, and waits.

One JSON line each way. The ask names environments (none: all); the daemon's main loop takes the asks
waiting before it fetches (`Asks.take`), binds them to that fetch (`Asks.bind`) and forces the named
environments; each one's first reconcile submitted after that fetch answers it (`Asks.finished`, from the
environment threads). The socket's threads only wait: nothing is fetched or reconciled in them.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

log = logging.getLogger(__name__)
SOCKET = "control.sock"  # in the state dir
MAX_REQUEST = 64 * 1024  # bytes of one ask
MAX_WAIT = 3600.0  # seconds an ask may wait for its reconciles
UNKNOWN = 2  # the exit code of an ask naming an environment the daemon does not reconcile
FAILED = 1


@dataclass
class Ask:
    """One `reconcile` request: created in a socket thread, bound by the main loop, answered by environment
    threads (every field is changed under `Asks._lock`)."""

    names: tuple[str, ...]  # () = every environment the daemon reconciles
    done: threading.Event = field(default_factory=threading.Event)
    generation: int | None = None  # the fetch it waits for
    revision: str = ""  # that fetch's revision
    wanted: frozenset[str] = frozenset()
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""
    code: int = 0

    def answer(self) -> dict[str, Any]:
        return {"code": self.code, "error": self.error, "revision": self.revision,
                "results": [self.results[n] for n in sorted(self.results)]}


class Asks:
    """The pending and bound asks of one daemon (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Ask] = []
        self._bound: list[Ask] = []

    def add(self, names: Iterable[str]) -> Ask:
        ask = Ask(tuple(names))
        with self._lock:
            self._pending.append(ask)
        return ask

    def take(self) -> list[Ask]:
        """The asks made before now (the main loop, before it fetches)."""
        with self._lock:
            taken, self._pending = self._pending, []
        return taken

    def bind(self, asks: list[Ask], generation: int, revision: str, known: list[str]) -> set[str]:
        """Tie `asks` to the fetch `generation` of `revision`; an ask naming an environment not in `known` is
        answered at once (exit 2). Returns the environments to force."""
        forced: set[str] = set()
        with self._lock:
            for ask in asks:
                unknown = sorted(set(ask.names) - set(known))
                if unknown:
                    self._answer(ask, UNKNOWN, f"unknown environment(s) {', '.join(unknown)} (this daemon reconciles: "
                                               f"{', '.join(known) or 'none'})")
                    continue
                ask.generation, ask.revision = generation, revision
                ask.wanted = frozenset(ask.names or known)
                if not ask.wanted:
                    self._answer(ask, 0, "")
                    continue
                self._bound.append(ask)
                forced |= ask.wanted
        return forced

    def finished(self, name: str, generation: int, result: dict[str, Any], failed: bool) -> None:
        """`name`'s reconcile submitted after fetch `generation` ended (an environment thread)."""
        with self._lock:
            for ask in list(self._bound):
                if name in ask.wanted and name not in ask.results and ask.generation is not None \
                        and generation >= ask.generation:
                    ask.results[name] = result
                    ask.code = ask.code or (FAILED if failed else 0)
                    if ask.wanted <= set(ask.results):
                        self._answer(ask, ask.code, "")

    def fail(self, asks: Iterable[Ask] | None, message: str) -> None:
        """Answer `asks` (None: every one not answered yet) with an error."""
        with self._lock:
            if asks is None:
                asks, self._pending = [*self._pending, *self._bound], []
            for ask in list(asks):
                self._answer(ask, FAILED, message)

    def _answer(self, ask: Ask, code: int, error: str) -> None:
        ask.code, ask.error = code, error
        if ask in self._bound:
            self._bound.remove(ask)
        ask.done.set()


def path(state_dir: Path) -> Path:
    return state_dir / SOCKET


def _check_length(where: Path) -> None:
    if len(os.fsencode(where)) >= 108:  # sockaddr_un's sun_path
        raise ConfigError(f"control socket {where}: path too long for a Unix socket (use a shorter --state-dir)")


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        uid = struct.unpack("3i", self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))[1]
        if uid != os.getuid():
            return  # only the daemon's own user (the file mode says the same)
        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST))
            names = [str(n) for n in request.get("environments") or []]
            wait = min(float(request.get("timeout") or MAX_WAIT), MAX_WAIT)
        except (ValueError, TypeError, AttributeError):
            self._reply({"code": UNKNOWN, "error": "bad request", "revision": "", "results": []})
            return
        ask = self.server.ask(names)
        if not ask.done.wait(wait):
            self.server.asks.fail([ask], f"no answer within {wait:g} s")
        self._reply(ask.answer())

    def _reply(self, answer: dict[str, Any]) -> None:
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the command gave up waiting


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The socket and its threads (one per connection, daemonic); `ask` registers and wakes the daemon."""

    daemon_threads = True

    def __init__(self, state_dir: Path, asks: Asks, wake: Callable[[], None]) -> None:
        self.asks, self._wake, self.where = asks, wake, path(state_dir)
        _check_length(self.where)
        if _answers(self.where):
            raise ConfigError(f"control socket {self.where}: another daemon answers on it (one daemon per state dir)")
        self.where.unlink(missing_ok=True)  # left by a daemon that was killed
        super().__init__(str(self.where), _Handler)
        os.chmod(self.where, 0o600)

    def ask(self, names: list[str]) -> Ask:
        ask = self.asks.add(names)
        self._wake()
        return ask

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="control", daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.where.unlink(missing_ok=True)


def _answers(where: Path) -> bool:
    """Some process listens on `where`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(where))
        except OSError:
            return False
    return True


class NoDaemon(Exception):
    """No daemon listens on the state dir's control socket."""


def request(state_dir: Path, names: list[str], timeout: float) -> dict[str, Any]:
    """Ask the daemon of `state_dir` to fetch and reconcile `names` (none: all) and wait for its answer
    (`code`, `error`, `revision`, `results`). Raises NoDaemon, or TimeoutError after `timeout` seconds."""
    where = path(state_dir)
    _check_length(where)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(where))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(f"no daemon is running with state dir {state_dir} (nothing answers on {where})") from None
        conn.settimeout(timeout + 5)
        conn.sendall(json.dumps({"environments": names, "timeout": timeout}).encode() + b"\n")
        try:
            with conn.makefile("rb") as reply:
                line = reply.readline()
        except TimeoutError:
            raise TimeoutError(f"no answer from the daemon within {timeout:g} s") from None
    if not line:
        raise NoDaemon(f"the daemon of state dir {state_dir} closed the connection (stopping?)")
    return json.loads(line)
