"""How one fuzzed request ended, as the wire showed it: answered (HTTP status, gRPC status from
trailers or a trailers-only response, or the JSON google.rpc.Status the transcoder renders),
reset by the server, left unanswered past its deadline, or ended by the fuzzer itself."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

BODY_KEPT = 300
"""Bytes of a response body kept for the report's examples."""


class End(Enum):
    """How a request ended."""

    ANSWERED = "answered"
    """A whole response arrived (END_STREAM, or a complete HTTP/1.1 message)."""
    RESET = "reset"
    """The server reset the stream or closed the connection before the response ended."""
    UNANSWERED = "unanswered"
    """The request was complete and nothing ended it within its deadline."""
    CLIENT_RESET = "client reset"
    """The fuzzer reset the stream itself mid-request, as the case says: no answer is due."""
    STREAM_OPEN = "stream open"
    """A streaming method's call still ran when the fuzzer stopped waiting: no answer is due."""
    UNREACHABLE = "unreachable"
    """No connection to the gateway."""


def status_name(code: int) -> str:
    """`3 INVALID_ARGUMENT`; a number outside the gRPC codes as it is."""
    names = {status.value[0]: status.name for status in grpc.StatusCode}
    return f"{code} {names.get(code, '?')}"


@dataclass(frozen=True)
class Reply:
    """One request's end and what came back."""

    end: End
    elapsed: float
    http_status: int | None = None
    grpc_status: int | None = None
    grpc_message: str = ""
    error_info: bool = False
    """Whether rich details came (grpc-status-details-bin, or `details` in a JSON status)."""
    body: bytes = b""
    note: str = ""
    """The reset's error code, or what broke the connection."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Response headers and trailers (the last value of a repeated name)."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """The ErrorInfo reasons that came, in order: in grpc-status-details-bin, or in the
        `details` of a JSON google.rpc.Status."""
        raw = self.headers.get("grpc-status-details-bin")
        if raw is None:
            return json_reasons(self.body)
        try:
            status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        except (ValueError, DecodeError):
            return ()
        found = []
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                found.append(info.reason)
        return tuple(found)

    @property
    def label(self) -> str:
        """The outcome in a few words, what the report counts by."""
        if self.end is End.ANSWERED:
            if self.grpc_status is not None:
                return f"grpc {status_name(self.grpc_status)}"
            return f"http {self.http_status} (no grpc-status)"
        if self.end is End.RESET:
            return f"reset ({self.note})" if self.note else "reset"
        return str(self.end.value)

    def describe(self) -> str:
        """The label with the status message (or the start of the body) for examples."""
        text = self.grpc_message or self.body[:120].decode(errors="replace")
        text = " ".join(text.split())
        return f"{self.label} after {self.elapsed:.2f}s" + (f": {text[:160]}" if text else "")


def grpc_fields(headers: Mapping[str, str]) -> tuple[int | None, str, bool]:
    """(grpc-status, grpc-message, has details) from response headers or trailers."""
    raw = headers.get("grpc-status")
    status = int(raw) if raw is not None and raw.isdigit() else None
    return status, headers.get("grpc-message", ""), "grpc-status-details-bin" in headers


def json_status(
    http_status: int, headers: Mapping[str, str], body: bytes
) -> tuple[int | None, str, bool]:
    """The gRPC status of an HTTP/1.1 answer: a grpc-status header if the gateway left one;
    OK for a transcoded response message (HTTP 200 with JSON); the google.rpc.Status the
    transcoder renders an error as (`{"code": 3, "message": ...}`); else (None, "", False)."""
    status, message, details = grpc_fields(headers)
    if status is not None:
        return status, message, details
    if not headers.get("content-type", "").startswith("application/json"):
        return None, "", False
    if http_status == 200:
        return 0, "", False
    try:
        document = json.loads(body)
    except ValueError:
        return None, "", False
    code = document.get("code") if isinstance(document, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return None, "", False
    return code, str(document.get("message", "")), bool(document.get("details"))


def json_reasons(body: bytes) -> tuple[str, ...]:
    """The ErrorInfo reasons in the `details` of a JSON google.rpc.Status, in order."""
    try:
        document = json.loads(body)
    except ValueError:
        return ()
    details = document.get("details") if isinstance(document, dict) else None
    if not isinstance(details, list):
        return ()
    return tuple(str(d["reason"]) for d in details if isinstance(d, dict) and "reason" in d)
