"""One HTTP/2 request on a connection of its own, written frame by frame with the h2 library:
any headers (h2's own checks are off, so names with capitals, underscores or connection
headers go out as given), any DATA split, trailers, a reset of our own, and raw frames
(hyperframe) after what h2 wrote. A connection per request keeps a connection-level error
charged to the case that caused it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from enum import Enum

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from scripts.fuzz.connection import READ_SIZE, Unreachable, connected
from scripts.fuzz.reply import BODY_KEPT, End, Reply, grpc_fields


class Finish(Enum):
    """What the client does once the request's frames are out."""

    END = "end"
    """END_STREAM on the last frame: the request is complete and an answer is due."""
    OPEN = "open"
    """No END_STREAM, ever: the request never completes (only the edge can end it)."""
    RESET = "reset"
    """RST_STREAM(CANCEL) from the client: it gave up; nothing is due."""


@dataclass(frozen=True)
class H2Request:
    """Everything the client sends on its one stream, in order."""

    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...] = ()
    """The body, one DATA frame each (split further only to fit the peer's frame size)."""
    trailers: tuple[tuple[str, str], ...] = ()
    finish: Finish = Finish.END
    inject: bytes = b""
    """Raw frames written after h2's, which h2 does not know of (frames h2 refuses to make)."""


def _config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )


class _Exchange:
    """The client's side of one connection: what it sent and what came back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.connection = h2.connection.H2Connection(config=_config())
        self.stream = 1
        self.headers: dict[str, str] = {}
        self.body = bytearray()

    def flush(self, extra: bytes = b"") -> None:
        self.writer.write(self.connection.data_to_send() + extra)

    def send(self, request: H2Request) -> None:
        connection = self.connection
        connection.initiate_connection()
        self.stream = connection.get_next_available_stream_id()
        ends = request.finish is Finish.END
        last_headers = ends and not request.chunks and not request.trailers
        connection.send_headers(self.stream, list(request.headers), end_stream=last_headers)
        for index, chunk in enumerate(request.chunks):
            last = ends and not request.trailers and index == len(request.chunks) - 1
            size = connection.max_outbound_frame_size
            pieces = [chunk[i : i + size] for i in range(0, len(chunk), size)] or [b""]
            for number, piece in enumerate(pieces):
                connection.send_data(
                    self.stream, piece, end_stream=last and number == len(pieces) - 1
                )
        if request.trailers and ends:
            connection.send_headers(self.stream, list(request.trailers), end_stream=True)
        if request.finish is Finish.RESET:
            connection.reset_stream(self.stream, h2.errors.ErrorCodes.CANCEL)
        self.flush(request.inject)

    async def receive(self, started: float) -> Reply:
        """Read until the stream ends, is reset, or the connection goes."""
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return self.reply(End.RESET, started, "connection closed")
            try:
                events = self.connection.receive_data(data)
            except h2.exceptions.ProtocolError as error:
                return self.reply(End.RESET, started, f"protocol error: {error}")
            for event in events:
                ended = self.handle(event, started)
                if ended is not None:
                    return ended
            self.flush()

    def handle(self, event: h2.events.Event, started: float) -> Reply | None:
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            if event.stream_id == self.stream and event.headers is not None:
                self.headers.update({_text(k): _text(v) for k, v in event.headers})
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id == self.stream and event.data is not None:
                self.body += event.data[: max(0, BODY_KEPT - len(self.body))]
            if event.flow_controlled_length and event.stream_id is not None:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.connection.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id == self.stream:
            return self.reply(End.ANSWERED, started)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == self.stream:
            return self.reply(End.RESET, started, _code(event.error_code))
        elif isinstance(event, h2.events.ConnectionTerminated):
            return self.reply(End.RESET, started, f"GOAWAY {_code(event.error_code)}")
        return None

    def reply(self, end: End, started: float, note: str = "") -> Reply:
        status = self.headers.get(":status", "")
        grpc_status, message, details = grpc_fields(self.headers)
        return Reply(
            end=end,
            elapsed=time.monotonic() - started,
            http_status=int(status) if status.isdigit() else None,
            grpc_status=grpc_status,
            grpc_message=message,
            error_info=details,
            body=bytes(self.body),
            note=note,
            headers=dict(self.headers),
        )

    def goaway(self) -> None:
        """Say goodbye politely where the connection still allows it."""
        with contextlib.suppress(h2.exceptions.ProtocolError, ConnectionError):
            self.connection.close_connection()
            self.flush()


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _code(code: int | h2.errors.ErrorCodes | None) -> str:
    if isinstance(code, h2.errors.ErrorCodes):
        return code.name
    return str(code)


async def exchange(host: str, port: int, request: H2Request, within: float) -> Reply:
    """Send `request` on a new connection and wait up to `within` seconds for its end."""
    started = time.monotonic()
    try:
        async with connected(host, port, started) as (reader, writer):
            wire = _Exchange(reader, writer)
            try:
                wire.send(request)
                await writer.drain()
                if request.finish is Finish.RESET:
                    return wire.reply(End.CLIENT_RESET, started)
                return await asyncio.wait_for(wire.receive(started), within)
            except TimeoutError:
                return wire.reply(End.UNANSWERED, started)
            except ConnectionError as error:
                return wire.reply(End.RESET, started, type(error).__name__)
            finally:
                wire.goaway()
    except Unreachable as unreachable:
        return unreachable.reply
