"""Requests whose bytes are not their request message (a fuzzer's random body, a client built
from another contract).

grpcio decodes a request before any interceptor's behaviour runs, and a failure there becomes
UNKNOWN with the Python exception class in the message, plus a traceback in the log. So the
error-mapping interceptor gives every method a `tolerant` deserializer instead: it hands an
`Undecodable` on to the behaviour, which answers `malformed_request` (INVALID_ARGUMENT with an
ErrorInfo) like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from services.common.errors import InvalidArgument

MALFORMED_REQUEST = "MALFORMED_REQUEST"
"""ErrorInfo reason of a request that does not decode as its method's request message."""


class Undecodable:
    """Stands in for a request that did not decode; `error` says why (for the log only)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


Deserializer = Callable[[bytes], Any]


def tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, returning an Undecodable instead of raising for bytes that are not its
    message (None stays None: grpc then passes the bytes through, which cannot fail)."""
    if deserializer is None:
        return None
    decode = deserializer

    def decoded(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as error:
            return Undecodable(str(error))

    return decoded


def malformed_request(method: str) -> InvalidArgument:
    """The error for a request to `method` whose bytes are not its request message."""
    return InvalidArgument(
        f"the request to {method} is not a valid encoding of its request message",
        reason=MALFORMED_REQUEST,
        metadata={"method": method},
    )
