"""One HTTP/1.1 request on a connection of its own (h11): any verb, the request target exactly
as given (no client normalizes `..` or `//` away), any headers and body."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import h11

from scripts.fuzz.connection import READ_SIZE, Unreachable, connected
from scripts.fuzz.reply import BODY_KEPT, End, Reply, json_status


@dataclass(frozen=True)
class Http1Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    """Besides Host and Content-Length, which every request gets."""
    body: bytes = b""


async def _receive(
    reader: asyncio.StreamReader, connection: h11.Connection, started: float
) -> Reply:
    status: int | None = None
    headers: dict[str, str] = {}
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            if not data and status is None:
                return Reply(End.RESET, time.monotonic() - started, note="connection closed")
            connection.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {name.decode().lower(): value.decode() for name, value in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data[: max(0, BODY_KEPT - len(body))]
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            assert status is not None
            end = End.ANSWERED if isinstance(event, h11.EndOfMessage) else End.RESET
            grpc_status, message, details = json_status(status, headers, bytes(body))
            return Reply(
                end=end,
                elapsed=time.monotonic() - started,
                http_status=status,
                grpc_status=grpc_status,
                grpc_message=message,
                error_info=details,
                body=bytes(body),
                headers=headers,
            )


async def exchange(host: str, port: int, request: Http1Request, within: float) -> Reply:
    """Send `request` on a new connection and wait up to `within` seconds for the response."""
    started = time.monotonic()
    connection = h11.Connection(h11.CLIENT)
    headers = [
        ("host", f"{host}:{port}"),
        *request.headers,
        ("content-length", str(len(request.body))),
    ]
    head = h11.Request(method=request.method, target=request.target, headers=headers)
    try:
        async with connected(host, port, started) as (reader, writer):
            try:
                for event in (head, h11.Data(data=request.body), h11.EndOfMessage()):
                    writer.write(connection.send(event) or b"")
                await writer.drain()
                return await asyncio.wait_for(_receive(reader, connection, started), within)
            except TimeoutError:
                return Reply(End.UNANSWERED, time.monotonic() - started)
            except (ConnectionError, h11.RemoteProtocolError) as error:
                return Reply(End.RESET, time.monotonic() - started, note=type(error).__name__)
    except Unreachable as unreachable:
        return unreachable.reply
