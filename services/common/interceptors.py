"""Server and client interceptors: the call's context carried on, domain-error mapping, and
requests that do not decode.

Handlers stay "request -> domain call -> response": the deadline a caller set and its
`x-request-id` are recorded here and applied to every downstream call made while serving it
(with the trace context of the span current when the call is made),
a DomainError raised anywhere below a handler becomes a gRPC status with google.rpc rich
details, and a request whose bytes are not its message is INVALID_ARGUMENT MALFORMED_REQUEST
(services.common.decoding).

Each interceptor wraps a method's handler once, the first time the method is called, and serves
every later call with the same wrapped handler: the chain costs a call a few dictionary
lookups, not a rebuilt handler per interceptor.
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

from services.common.decoding import MALFORMED_REQUEST, Undecodable, malformed_request, tolerant
from services.common.errors import DomainError
from services.common.logs import ThrottledLog
from services.common.status import internal_status, to_grpc_status
from services.common.telemetry import (
    REQUEST_ID,
    inject_trace_context,
    request_id,
    set_request_id,
)

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
Deserializer: TypeAlias = "Callable[[bytes], Any] | None"


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
    """Wraps the behaviour of every method it `applies` to (unary requests; `wrap_bidi` for
    streams both ways) and can swap its request deserializer; the wrappers know the method.
    A wrapped handler is kept per method and reused while the handler below is the same."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def applies(self, method: str) -> bool:
        return True

    def wrap_unary(self, behaviour: Unary, method: str) -> Unary:
        raise NotImplementedError

    def wrap_streaming(self, behaviour: Streaming, method: str) -> Streaming:
        raise NotImplementedError

    def wrap_bidi(self, behaviour: Streaming, method: str) -> Streaming | None:
        """The wrapped behaviour of a bidirectional stream, or None to leave it as it is."""
        return None

    def wrap_deserializer(self, deserializer: Deserializer, method: str) -> Deserializer:
        return deserializer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies(method):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        """`handler` with its behaviour wrapped (and its deserializer, for the kinds wrapped)."""
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(cast(Unary, handler.unary_unary), method),
                request_deserializer=self.wrap_deserializer(handler.request_deserializer, method),
                response_serializer=serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_streaming(_as_async_iterator(handler.unary_stream), method),
                request_deserializer=self.wrap_deserializer(handler.request_deserializer, method),
                response_serializer=serializer,
            )
        if handler.stream_stream is not None:
            bidi = self.wrap_bidi(_as_async_iterator(handler.stream_stream), method)
            if bidi is not None:
                return grpc.stream_stream_rpc_method_handler(
                    bidi,
                    request_deserializer=self.wrap_deserializer(
                        handler.request_deserializer, method
                    ),
                    response_serializer=serializer,
                )
        # Client streams (the mesh has none), and bidirectional ones this interceptor leaves.
        return handler


def _record_call_context(context: aio.ServicerContext[Any, Any]) -> None:
    left = context.time_remaining()
    _deadline.set(None if left is None else time.monotonic() + left)
    received = dict(context.invocation_metadata() or ()).get(REQUEST_ID)
    set_request_id(received if isinstance(received, str) else None)


class CallContextInterceptor(_WrappingInterceptor):
    """Records the caller's deadline and request id, so downstream calls inherit what is left
    of the one and carry the other."""

    def wrap_unary(self, behaviour: Unary, method: str) -> Unary:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            _record_call_context(context)
            return await behaviour(request, context)

        return unary

    def wrap_streaming(self, behaviour: Streaming, method: str) -> Streaming:
        async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            _record_call_context(context)
            async for response in behaviour(request, context):
                yield response

        return streaming


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns DomainError into the matching status code with ErrorInfo/BadRequest details, and
    any other exception into INTERNAL (logged with its traceback) instead of a bare UNKNOWN.
    A request that does not decode as its message is INVALID_ARGUMENT MALFORMED_REQUEST. The
    innermost interceptor: the others see the status it sets. Its log lines are throttled,
    since callers can cause them as fast as they can call."""

    def __init__(self) -> None:
        super().__init__()
        self._log = ThrottledLog(log)

    def wrap_deserializer(self, deserializer: Deserializer, method: str) -> Deserializer:
        return tolerant(deserializer)

    def wrap_unary(self, behaviour: Unary, method: str) -> Unary:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behaviour(self._decoded(request, method), context)
            except aio.AbortError:
                raise
            except Exception as error:
                await self._abort_for(error, context, method)

        return unary

    def wrap_streaming(self, behaviour: Streaming, method: str) -> Streaming:
        def decoded(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            return behaviour(self._decoded(request, method), context)

        return self._mapped(decoded, method)

    def wrap_bidi(self, behaviour: Streaming, method: str) -> Streaming:
        async def each_decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                yield self._decoded(request, method)

        def decoded(requests: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            # A request that does not decode raises in the servicer's loop over requests.
            return behaviour(each_decoded(requests), context)

        return self._mapped(decoded, method)

    def _mapped(self, behaviour: Streaming, method: str) -> Streaming:
        async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                async for response in behaviour(request, context):
                    yield response
            except aio.AbortError:
                raise
            except Exception as error:
                await self._abort_for(error, context, method)

        return streaming

    def _decoded(self, request: Any, method: str) -> Any:
        if type(request) is Undecodable:
            self._log.log(
                logging.WARNING,
                MALFORMED_REQUEST,
                "undecodable request",
                extra={"method": method, "error": request.error},
            )
            raise malformed_request(method)
        return request

    async def _abort_for(
        self, error: Exception, context: aio.ServicerContext[Any, Any], method: str
    ) -> None:
        if isinstance(error, DomainError):
            await _abort(context, to_grpc_status(error))
        else:
            self._log.log(
                logging.ERROR,
                "INTERNAL",
                "unhandled error in handler",
                extra={"method": method},
                exc_info=True,
            )
            await _abort(context, internal_status())


CHATTER_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
"""Methods of the mesh's own chatter (health checks every second, reflection): not logged."""
SERVER_SIDE_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
    }
)


class CallLogInterceptor(_WrappingInterceptor):
    """One log line per call served: method, gRPC status and duration, with the trace and
    request ids every line carries. At DEBUG (SHOPMESH_LOG_LEVEL=DEBUG) for every call, so a
    trace id leads to the app's own account of the call; at WARNING for a failure with a
    server-side code whatever the level, at most one line a second per status (callers can
    provoke these too: a deadline too short, a flood), the rest at DEBUG. Sits outside
    ErrorMappingInterceptor to see the status it sets."""

    def __init__(self) -> None:
        super().__init__()
        self._warnings = ThrottledLog(log)

    def applies(self, method: str) -> bool:
        return not method.startswith(CHATTER_PREFIXES)

    def wrap_unary(self, behaviour: Unary, method: str) -> Unary:
        async def logged(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.monotonic()
            try:
                return await behaviour(request, context)
            finally:
                self._log_call(method, context, started)

        return logged

    def wrap_streaming(self, behaviour: Streaming, method: str) -> Streaming:
        async def logged(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.monotonic()
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                self._log_call(method, context, started)

        return logged

    def _log_call(
        self, method: str, context: aio.ServicerContext[Any, Any], started: float
    ) -> None:
        code = context.code()
        status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK
        server_side = status in SERVER_SIDE_CODES
        if not server_side and not log.isEnabledFor(logging.DEBUG):
            return
        fields = {
            "method": method,
            "grpc_status": status.name,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
        }
        if server_side and self._warnings.log(logging.WARNING, status.name, "call served", fields):
            return
        log.debug("call served", extra=fields)


async def _abort(context: aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


class CallContextClientInterceptor(aio.UnaryUnaryClientInterceptor):
    """Gives every outgoing call the shorter of its own timeout and what is left of the
    incoming request's deadline (calls made outside a request get DEFAULT_CALL_TIMEOUT), and
    the request id and trace context of the work it is part of (no span of its own: the
    sidecar's egress span is the call's)."""

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
        metadata = aio.Metadata(*(client_call_details.metadata or ()))
        current = request_id()
        if current and not metadata.get_all(REQUEST_ID):
            metadata.add(REQUEST_ID, current)
        inject_trace_context(metadata)
        details = aio.ClientCallDetails(
            client_call_details.method,
            effective,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)
