"""Reading a failed call's status the way the contracts promise it: code and ErrorInfo."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc import aio

from services.common.status import error_info


def expect_error_info(error: aio.AioRpcError, code: grpc.StatusCode) -> error_details_pb2.ErrorInfo:
    """Check that a call failed with `code` and an ErrorInfo detail; return that ErrorInfo."""
    assert error.code() == code
    info = error_info(error)
    assert info is not None, f"{code.name} without an ErrorInfo detail: {error.details()!r}"
    return info
