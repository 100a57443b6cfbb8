"""Server and client interceptors: deadline propagation and domain-error mapping.

Handlers stay "request -> domain call -> response": the deadline a caller set is recorded here and
applied to every downstream call made while serving it, and a DomainError raised anywhere below
a handler becomes a gRPC status with google.rpc rich details.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from grpc import aio

from services.common.errors import DomainError
from services.common.status import internal_status, to_grpc_status

log = logging.getLogger(__name__)

# Used for downstream calls made outside any incoming request (recovery loops, relays).
DEFAULT_CALL_TIMEOUT = 10.0

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

Unary = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def remaining_time() -> float | None:
    """Seconds left of the deadline of the request being served, or None outside a request."""
    deadline = _deadline.get()
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


# Subscripted only for the type checker: grpc.RpcMethodHandler is not generic at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _wrap(
    handler: Handler,
    unary: Callable[[Unary], Unary],
    streaming: Callable[[Streaming], Streaming],
) -> Handler:
    """Rebuild `handler` with its behaviour wrapped (unary-unary and unary-stream RPCs)."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(cast(Unary, handler.unary_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(_as_async_iterator(handler.unary_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _as_async_iterator(behaviour: Any) -> Streaming:
    """Present a server-streaming handler as an async generator. Ours are async generators, but
    grpc's own HealthServicer.Watch is a coroutine that sends with `context.write`; iterating
    that coroutine would fail every Watch with INTERNAL."""

    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        result = behaviour(request, context)
        if inspect.isawaitable(result):
            await result
            return
        async for response in result:
            yield response

    return stream


class _WrappingInterceptor(aio.ServerInterceptor):
    def wrap_unary(self, behaviour: Unary) -> Unary:
        raise NotImplementedError

    def wrap_streaming(self, behaviour: Streaming) -> Streaming:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _wrap(handler, self.wrap_unary, self.wrap_streaming)


def _record_deadline(context: aio.ServicerContext[Any, Any]) -> None:
    left = context.time_remaining()
    _deadline.set(None if left is None else time.monotonic() + left)


class DeadlineInterceptor(_WrappingInterceptor):
    """Records the caller's deadline so downstream calls inherit what is left of it."""

    def wrap_unary(self, behaviour: Unary) -> Unary:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            _record_deadline(context)
            return await behaviour(request, context)

        return unary

    def wrap_streaming(self, behaviour: Streaming) -> Streaming:
        async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            _record_deadline(context)
            async for response in behaviour(request, context):
                yield response

        return streaming


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns DomainError into the matching status code with ErrorInfo/BadRequest details, and
    any other exception into INTERNAL (logged with its traceback) instead of a bare UNKNOWN."""

    def wrap_unary(self, behaviour: Unary) -> Unary:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behaviour(request, context)
            except DomainError as error:
                await _abort(context, to_grpc_status(error))
            except aio.AbortError:
                raise
            except Exception:
                log.exception("unhandled error in handler")
                await _abort(context, internal_status())

        return unary

    def wrap_streaming(self, behaviour: Streaming) -> Streaming:
        async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                async for response in behaviour(request, context):
                    yield response
            except DomainError as error:
                await _abort(context, to_grpc_status(error))
            except aio.AbortError:
                raise
            except Exception:
                log.exception("unhandled error in streaming handler")
                await _abort(context, internal_status())

        return streaming


async def _abort(context: aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


class DeadlineClientInterceptor(aio.UnaryUnaryClientInterceptor):
    """Gives every outgoing call the shorter of its own timeout and what is left of the
    incoming request's deadline; calls made outside a request get DEFAULT_CALL_TIMEOUT."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        left = remaining_time()
        timeout = client_call_details.timeout
        candidates = [t for t in (timeout, left) if t is not None]
        effective = min(candidates) if candidates else DEFAULT_CALL_TIMEOUT
        details = aio.ClientCallDetails(
            client_call_details.method,
            effective,
            client_call_details.metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
