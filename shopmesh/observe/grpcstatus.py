"""gRPC status codes by number and name, as Envoy's logs and stats give them (numbers) and as
people read them (names)."""

from __future__ import annotations

import grpc

STATUS_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}
"""14 -> UNAVAILABLE, for every status gRPC defines."""


def status_name(code: int | str) -> str:
    """The name of status `code` (`14` or "14" -> UNAVAILABLE); the code itself if gRPC
    defines no such status."""
    try:
        return STATUS_NAMES.get(int(code), str(code))
    except ValueError:
        return str(code)
