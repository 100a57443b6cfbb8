"""Raw HTTP/2 on a socket, for what a client library hides: the SETTINGS a server advertises
(RFC 9113 section 6.5)."""

from __future__ import annotations

import socket

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = 0x4
MAX_CONCURRENT_STREAMS = 0x3


def read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def server_settings(connection: socket.socket) -> dict[int, int]:
    """Send the client preface on a connection that negotiated h2; the server's SETTINGS
    (its first frame), by identifier."""
    empty_settings = (0).to_bytes(3, "big") + bytes([SETTINGS, 0]) + bytes(4)
    connection.sendall(PREFACE + empty_settings)
    header = read_exactly(connection, 9)
    length, kind = int.from_bytes(header[:3], "big"), header[3]
    assert kind == SETTINGS, f"first frame of type {kind}, not SETTINGS"
    payload = read_exactly(connection, length)
    entries = (payload[i : i + 6] for i in range(0, length, 6))
    return {int.from_bytes(e[:2], "big"): int.from_bytes(e[2:], "big") for e in entries}
