"""Calls made as a signed-in user, as the gateway names them to the services, and what a test
needs to check a refusal for someone else's data reveals nothing.

`as_user(user_id)` is the one place tests build the caller metadata: pass it as `metadata=`
to any stub call of a method that answers only for the caller's own data. `CallerLog` wraps a
service's build to record whom each call it served was made for (what orders passes on).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc import aio
from grpc_status import rpc_status

from services.common.caller import caller_of, on_behalf_of
from services.common.config import ServiceConfig
from services.common.server import App
from tests.support.services import Build


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


@dataclass
class CallerLog:
    """Whom each unary call served by the wrapped services was made for: (method, caller),
    in the order served (the caller is None for a call that named nobody)."""

    calls: list[tuple[str, str | None]] = field(default_factory=list)

    def wrap(self, build: Build) -> Build:
        """`build`, with every unary method of its servicers recording its caller here."""

        async def recorded(config: ServiceConfig) -> App:
            app = await build(config)
            app.registrations = [
                replace(registration, servicer=_Recording(registration.servicer, self.calls))
                for registration in app.registrations
            ]
            return app

        return recorded


class _Recording:
    """A servicer that records the caller of each unary call, then serves it as `inner`."""

    def __init__(self, inner: Any, calls: list[tuple[str, str | None]]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def recorded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            self._calls.append((name, caller_of(context)))
            return await method(request, context)

        return recorded
