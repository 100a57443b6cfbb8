"""A fresh TCP connection to the gateway for one fuzzed request, and closing it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from scripts.fuzz.reply import End, Reply

READ_SIZE = 65_536
CONNECT_TIMEOUT = 5.0
"""Seconds to connect on loopback; a request's own deadline counts from when it is sent."""

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Unreachable(Exception):
    """No connection: `reply` says so."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.note)
        self.reply = reply


@contextlib.asynccontextmanager
async def connected(host: str, port: int, started: float) -> AsyncIterator[Streams]:
    """A new connection to host:port, closed after the block; Unreachable if none can be had
    within CONNECT_TIMEOUT."""
    try:
        connecting = asyncio.open_connection(host, port)
        reader, writer = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as error:
        reply = Reply(End.UNREACHABLE, time.monotonic() - started, note=str(error))
        raise Unreachable(reply) from None
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
