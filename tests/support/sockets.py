"""What sockets a process holds, read from /proc (/proc/<pid>/fd matched against
/proc/<pid>/net/{tcp,tcp6,unix}); psutil is not a dependency."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x00010000  # __SO_ACCEPTCON: a listening Unix socket


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket of a process: local address and port, and whether it listens."""

    address: str
    port: int
    listening: bool


@dataclass(frozen=True)
class ProcessSockets:
    """Every socket a process holds, from /proc/<pid>/fd matched against /proc/<pid>/net."""

    tcp: tuple[TcpSocket, ...]
    unix_listening: tuple[str, ...]
    """Paths of the Unix sockets it listens on."""

    @property
    def tcp_listening(self) -> tuple[TcpSocket, ...]:
        return tuple(sock for sock in self.tcp if sock.listening)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _ip(hex_address: str) -> str:
    """A /proc/net/tcp{,6} address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def process_sockets(pid: int) -> ProcessSockets:
    """The TCP sockets and listening Unix sockets held by process `pid`."""
    inodes = _socket_inodes(pid)
    tcp: list[TcpSocket] = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                address, port = fields[1].split(":")
                tcp.append(TcpSocket(_ip(address), int(port, 16), fields[3] == _TCP_LISTEN))
    unix: list[str] = []
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in inodes and int(fields[3], 16) & _UNIX_ACCEPTING:
            unix.append(fields[7])
    return ProcessSockets(tuple(tcp), tuple(unix))
