"""What a set of processes listens on, read from /proc (Linux): the listening TCP sockets of
/proc/net/tcp and /proc/net/tcp6, matched to the processes by the socket inodes of /proc/<pid>/fd.
Used by the tests that check what a local Ray cluster binds where."""
from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP state in /proc/net/tcp*
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class Listener:
    port: int
    address: Address
    pid: int
    process: str  # /proc/<pid>/comm (Ray renames its processes: ray::DashboardAgent -> "ray::DashboardA")

    @property
    def loopback(self) -> bool:
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback

    @property
    def host(self) -> str:
        """The address as `ss` prints it (an IPv4-mapped IPv6 address in dotted form)."""
        if isinstance(self.address, ipaddress.IPv6Address):
            mapped = self.address.ipv4_mapped
            return f"[::ffff:{mapped}]" if mapped is not None else f"[{self.address}]"
        return str(self.address)

    @property
    def reach(self) -> str:
        """The host to connect to it: its own address (bracketed if IPv6), or 127.0.0.1 for a wildcard."""
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_unspecified:
            return "127.0.0.1"
        return f"[{address}]" if address.version == 6 else str(address)

    def __str__(self) -> str:
        return f"{self.process}[{self.pid}] {self.host}:{self.port}"


def _address(hex_address: str) -> Address:
    """/proc/net/tcp* prints an address as 32-bit words in host byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def listening_inodes() -> dict[int, tuple[Address, int]]:
    """inode -> (address, port) of every listening TCP socket in this network namespace."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN:
                    address, port = fields[1].split(":")
                    found[int(fields[9])] = (_address(address), int(port, 16))
    return found


def listeners(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets the processes hold open (processes that are gone are skipped)."""
    inodes = listening_inodes()
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:[") and (inode := int(target[8:-1])) in inodes:
                        found.add(Listener(inodes[inode][1], inodes[inode][0], pid, comm))
    return sorted(found)


def processes(sessions: set[int], marker: bytes) -> set[int]:
    """Live processes in one of the sessions, or whose environment holds a variable starting with `marker`
    (a local cluster's processes: each node's session, and job drivers, which Ray starts in new sessions)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] in "ZX":
                continue
            if int(stat[3]) in sessions or any(
                    v.startswith(marker) for v in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")):
                found.add(int(entry))
    return found
