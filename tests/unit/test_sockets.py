"""tests/sockets.py, the tool the local-target tests use to see what binds where: it must find every
listening socket of a process, with its real address, and tell loopback from the rest."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.sockets import listeners, processes


def _listen(family: socket.AddressFamily, host: str) -> socket.socket | None:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
    except OSError:  # no IPv6 here
        s.close()
        return None
    s.listen()
    return s


@pytest.fixture
def bound() -> Iterator[dict[tuple[str, int], bool]]:
    """(address, port) -> loopback, for sockets this process listens on."""
    specs = [(socket.AF_INET, "127.0.0.1", True), (socket.AF_INET, "127.0.0.2", True),
             (socket.AF_INET, "0.0.0.0", False), (socket.AF_INET6, "::1", True), (socket.AF_INET6, "::", False),
             (socket.AF_INET6, "::ffff:127.0.0.1", True)]
    opened = [(s, loopback) for family, host, loopback in specs if (s := _listen(family, host)) is not None]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))  # bound but not listening: not a listener
    try:
        yield {(str(ipaddress.ip_address(sock.getsockname()[0])), sock.getsockname()[1]): loopback
               for sock, loopback in opened}
    finally:
        s.close()
        for sock, _ in opened:
            sock.close()


def test_listeners_finds_each_listening_socket_with_its_address(bound: dict[tuple[str, int], bool]) -> None:
    mine = {(str(listener.address), listener.port): listener.loopback for listener in listeners([os.getpid()])}
    assert mine == bound
    assert {False, True} <= set(mine.values())


def test_a_gone_process_has_no_listeners() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert listeners([child.pid]) == []


def test_processes_finds_a_session_and_a_marked_environment() -> None:
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                              env={**os.environ, "RGO_TEST_MARK": "abc.1"})
    leader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        found = processes({leader.pid}, b"RGO_TEST_MARK=abc.")
        assert marked.pid in found and leader.pid in found and other.pid not in found
        assert processes(set(), b"RGO_TEST_MARK=abd.") == set()
    finally:
        for child in (marked, leader, other):
            child.kill()
            child.wait()
