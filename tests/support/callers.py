"""Calls made as a signed-in user, as the gateway names them to the services, and what a test
needs to check a refusal for someone else's data reveals nothing.

`as_user(user_id)` is the one place tests build the caller metadata: pass it as `metadata=`
to any stub call of a method that answers only for the caller's own data.
"""

from __future__ import annotations

import grpc
from grpc import aio
from grpc_status import rpc_status

from services.common.caller import on_behalf_of


def as_user(user_id: str) -> tuple[tuple[str, str], ...]:
    """Request metadata for a call made by the signed-in user `user_id`."""
    return on_behalf_of(user_id)


def refusal(error: aio.AioRpcError, subject: str) -> tuple[grpc.StatusCode, str, bytes]:
    """Everything a caller learns from a failed call about `subject` (the id it asked for):
    code, message and the whole rich status, every detail and ErrorInfo metadata included,
    with `subject` replaced by a placeholder. A refusal for someone else's order equals the one
    for an unknown id of the same length, or the caller could tell the two apart."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, f"{error.code().name} without a rich status"
    return (
        error.code(),
        (error.details() or "").replace(subject, "<id>"),
        status.SerializeToString().replace(subject.encode(), b"<id>"),
    )
