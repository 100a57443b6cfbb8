"""What an outgoing call carries of the trace it is part of: the current span's W3C trace context,
as it is (the app makes no span of its own for a call: its sidecar's egress span is the call's),
and nothing when there is no current span."""

from __future__ import annotations

from typing import Any

from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from services.common.interceptors import CallContextClientInterceptor

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


async def sent_metadata(span: trace.Span | None = None, **given: str) -> dict[str, str | bytes]:
    """The metadata a call made through the channels' interceptor goes out with, made while
    `span` is current (none when None), its caller having set `given`."""
    sent: list[aio.ClientCallDetails] = []

    async def continuation(details: aio.ClientCallDetails, request: Any) -> str:
        sent.append(details)
        return "response"

    details = aio.ClientCallDetails(
        "/shop.users.v1.UsersService/GetUser", None, aio.Metadata(*given.items()), None, None
    )
    interceptor = CallContextClientInterceptor()
    if span is None:
        await interceptor.intercept_unary_unary(continuation, details, request=None)
    else:
        with trace.use_span(span):
            await interceptor.intercept_unary_unary(continuation, details, request=None)
    (made,) = sent
    return {key: value for key, value in made.metadata or ()}


def current(flags: TraceFlags = SAMPLED, state: TraceState | None = None) -> trace.Span:
    return NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, flags, state))


async def test_a_call_carries_the_current_span_as_its_parent() -> None:
    metadata = await sent_metadata(current())
    assert metadata["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
    assert "tracestate" not in metadata


async def test_a_call_carries_the_current_trace_state() -> None:
    metadata = await sent_metadata(current(state=TraceState([("vendor", "opaque")])))
    assert metadata["tracestate"] == "vendor=opaque"


async def test_a_call_follows_an_unsampled_decision() -> None:
    metadata = await sent_metadata(current(TraceFlags(TraceFlags.DEFAULT)))
    assert metadata["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"


async def test_a_call_made_outside_any_span_carries_no_trace_context() -> None:
    metadata = await sent_metadata(None, **{"x-shop-caller": "usr_1"})
    assert metadata == {"x-shop-caller": "usr_1"}


async def test_the_current_span_replaces_a_trace_context_set_by_the_caller() -> None:
    stale = f"00-{'ab' * 16}-{'cd' * 8}-01"
    metadata = await sent_metadata(current(), traceparent=stale)
    assert metadata["traceparent"] == f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"
