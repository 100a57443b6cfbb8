"""TCP ports on this machine: free ones for the mesh to use, and a clear refusal when a port
someone asked for is taken."""

from __future__ import annotations

import socket

from shopmesh.local.errors import MeshError


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct TCP ports free on `host` now (the OS picks them; all are held open
    together so none repeats, then released for Envoy, which binds with SO_REUSEADDR)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(host), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def require_free(host: str, port: int, what: str, way_out: str) -> None:
    """Refuse to go on when `port` on `host` is taken, naming `what` needs it and `way_out`."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # As the servers that will bind it do: connections of a previous run lingering in
        # TIME_WAIT do not make the port taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise MeshError(
                f"{what} {host}:{port} is not free ({error.strerror}); {way_out}"
            ) from None
