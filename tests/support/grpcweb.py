"""A small gRPC-Web client, the protocol a browser speaks (https://github.com/grpc/grpc/blob/
master/doc/PROTOCOL-WEB.md): an HTTP/1.1 POST of `application/grpc-web+proto` (or the base64
`application/grpc-web-text`) whose body is length-prefixed messages; the answer is messages,
then one frame with the high bit of its flag set that carries the trailers as HTTP header lines.
A trailers-only answer (a refusal) has grpc-status among its headers and no body.

It reads the answer frame by frame as it arrives, so a server stream's messages can be taken
one at a time while the stream stays open."""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tests.support.polling import CALL_TIMEOUT

M = TypeVar("M", bound=Message)

BINARY = "application/grpc-web+proto"
TEXT = "application/grpc-web-text"
TRAILER_FLAG = 0x80


def frame(message: bytes, flag: int = 0) -> bytes:
    """One length-prefixed gRPC(-Web) frame."""
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


def _trailer_lines(block: bytes) -> dict[str, str]:
    trailers = {}
    for line in block.decode("ascii").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            trailers[name.strip().lower()] = value.strip()
    return trailers


@dataclass
class GrpcWebReply:
    """What came back: the HTTP status and headers, the messages, and the trailers (those of
    the trailer frame, or the headers of a trailers-only answer)."""

    http_status: int
    headers: Mapping[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int | None:
        """The grpc-status, wherever it came (None: none came)."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    def _status_details(self) -> status_pb2.Status | None:
        raw = self.trailers.get(
            "grpc-status-details-bin", self.headers.get("grpc-status-details-bin")
        )
        if raw is None:
            return None
        return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))

    @property
    def reason(self) -> str | None:
        """The ErrorInfo reason of a failed call (None: no ErrorInfo came)."""
        details = self._status_details()
        for detail in details.details if details is not None else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
        return None

    @property
    def retry_delay(self) -> float | None:
        """The RetryInfo delay of a failed call, in seconds (None: no RetryInfo came)."""
        details = self._status_details()
        for detail in details.details if details is not None else ():
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(retry):
                return float(retry.retry_delay.ToTimedelta().total_seconds())
        return None

    def field_violations(self) -> list[tuple[str, str]]:
        """The BadRequest field violations of a failed call, as (field, description)."""
        details = self._status_details()
        found = []
        for detail in details.details if details is not None else ():
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                found += [(v.field, v.description) for v in bad.field_violations]
        return found

    def message(self, kind: type[M], index: int = 0) -> M:
        return kind.FromString(self.messages[index])


def _decode_text(encoded: bytes) -> bytes:
    pieces = re.findall(rb"[^=]+=*", encoded.replace(b"\r", b"").replace(b"\n", b""))
    return b"".join(base64.b64decode(piece) for piece in pieces)


class GrpcWebCall:
    """One call whose answer is read frame by frame (`next_message`, `finish`)."""

    def __init__(self, response: http.client.HTTPResponse, text: bool) -> None:
        self._response = response
        # grpc-web-text: base64, each piece of it padded on its own; read whole (unary calls).
        self._pending = _decode_text(response.read()) if text else b""
        received = {name.lower(): value for name, value in response.getheaders()}
        self.reply = GrpcWebReply(response.status, received)

    def _read(self, size: int) -> bytes | None:
        """Exactly `size` bytes of the (decoded) body, or None at its end."""
        while len(self._pending) < size:
            chunk = self._response.read1(65536)
            if not chunk:
                return None
            self._pending += chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def next_message(self) -> bytes | None:
        """The next message, or None once the trailers (or the end) came."""
        header = self._read(5)
        if header is None:
            return None
        data = self._read(int.from_bytes(header[1:], "big"))
        assert data is not None, "the answer ended inside a frame"
        if header[0] & TRAILER_FLAG:
            self.reply.trailers = _trailer_lines(data)
            return None
        self.reply.messages.append(data)
        return data

    def finish(self) -> GrpcWebReply:
        """Read to the end of the answer."""
        while self.next_message() is not None:
            pass
        return self.reply


@contextlib.contextmanager
def open_call(
    target: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str = BINARY,
    source: str | None = None,
) -> Iterator[GrpcWebCall]:
    """POST `body` (already framed) to `path` at `target` (host:port) as a browser would, from
    the address `source` if given; the connection closes when the block exits (which ends a
    server stream). Every read waits at most CALL_TIMEOUT."""
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(
        host,
        int(port),
        timeout=CALL_TIMEOUT,
        source_address=None if source is None else (source, 0),
    )
    text = content_type.startswith(TEXT)
    sent = base64.b64encode(body) if text else body
    request_headers = {
        "content-type": content_type,
        "accept": content_type,
        "x-grpc-web": "1",
        **(headers or {}),
    }
    try:
        connection.request("POST", path, sent, request_headers)
        yield GrpcWebCall(connection.getresponse(), text)
    finally:
        connection.close()


def call(
    target: str,
    path: str,
    request: Message | bytes,
    headers: Mapping[str, str] | None = None,
    content_type: str = BINARY,
) -> GrpcWebReply:
    """One unary gRPC-Web call of `request` (a message, framed here; or raw bytes as sent)."""
    body = frame(request.SerializeToString()) if isinstance(request, Message) else request
    with open_call(target, path, body, headers, content_type) as started:
        return started.finish()
