"""OpenTelemetry in every service: a span per RPC served (the gRPC instrumentation), spans of
the service's own work (`tracer`), and what ties them to the mesh's traces.

Tracing is on when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, which the
mesh sets); the standard OTEL_* variables configure the rest: OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG] (the mesh sets a parent-based ratio, so a
request follows the gateway's decision and background work is sampled at the same rate),
OTEL_BSP_SCHEDULE_DELAY, OTEL_EXPORTER_OTLP_INSECURE. Without an endpoint the API stays a no-op.

W3C trace context (`traceparent`) comes in with each call and goes out with each call made
while serving it. So does `x-request-id`: Envoy keeps its tracing decision in that header, so a
sidecar that never starts a trace traces exactly the calls of a sampled request, and the logs
of every hop share one request id. A call made gets no span of its own in the app: the
sidecar's `egress` span and its `attempt` spans already record it, so the trace context goes
out as it is (`inject_trace_context`) and the egress span is a child of the app's current span
(a saga step, the outbox relay's delivery, the call being served).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping, Sequence

from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

REQUEST_ID = "x-request-id"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

tracer = trace.get_tracer("shopmesh")
"""The tracer of the services' own spans (the saga's steps, the outbox relay)."""

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install the SDK with an OTLP/gRPC exporter when an endpoint is configured; returns the
    provider (shut it down last, it flushes what is left), or None when tracing is off."""
    env = os.environ if env is None else env
    if not any(env.get(variable) for variable in ENDPOINT_VARIABLES):
        return None
    # Imported here: the exporter pulls in more of gRPC's and protobuf's machinery than a
    # service without tracing needs.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # Resource.create adds OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over this default;
    # the sampler OTEL_TRACES_SAMPLER[_ARG] names (the SDK's own reading of them) is wrapped.
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=CallsFromOutsideUntraced(sampling._get_from_env_or_default()),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


class CallsFromOutsideUntraced(sampling.Sampler):
    """Only the gateway decides whether a call from outside the mesh is traced: a call an app
    serves without trace context came straight to its socket, past every sidecar (`make
    bench`'s direct baseline, a debugging session), and is not traced. Everything else is
    decided by `inner` (the mesh's parent-based ratio: a call follows its caller, background
    work is sampled at the ratio)."""

    def __init__(self, inner: sampling.Sampler) -> None:
        self._inner = inner

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> sampling.SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is trace.SpanKind.SERVER and not parent.is_valid:
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"CallsFromOutsideUntraced{{{self._inner.get_description()}}}"


def server_interceptors() -> list[aio.ServerInterceptor]:
    """A server span per incoming RPC, a child of the caller's (its sidecar's) span. Health
    checks and reflection are left out: they are the mesh's own chatter."""
    chatter = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    return [aio_server_interceptor(filter_=filters.negate(chatter))]


def inject_trace_context(metadata: aio.Metadata) -> None:
    """Put the current span's trace context on an outgoing call's `metadata`: `traceparent`,
    `tracestate` if it has any, and what else the configured propagators carry (OTel's own
    `propagate.inject`, as the gRPC instrumentation's client interceptor did, without its
    span). Nothing without a valid current span, so making a call never starts a trace."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    for key, value in headers.items():
        metadata[key] = value


def request_id() -> str | None:
    """The `x-request-id` of the call being served (or of the work continued from one)."""
    return _request_id.get()


def set_request_id(value: str | None) -> None:
    _request_id.set(value)


def log_ids() -> dict[str, str]:
    """The ids a log line carries: the current trace and span, and the request id."""
    ids: dict[str, str] = {}
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        ids["trace_id"] = trace.format_trace_id(span.trace_id)
        ids["span_id"] = trace.format_span_id(span.span_id)
    current = _request_id.get()
    if current:
        ids["request_id"] = current
    return ids


def carrier() -> dict[str, str]:
    """Where the current work comes from, as headers: its W3C trace context and request id.
    Work done later on its behalf (the outbox relay, a recovered saga) continues from it.
    Only these: it is stored with the order, and baggage is whatever a caller put there."""
    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers)
    current = _request_id.get()
    if current:
        headers[REQUEST_ID] = current
    return headers


@contextlib.contextmanager
def continued(
    headers: Mapping[str, str], name: str, attributes: Mapping[str, str] | None = None
) -> Iterator[trace.Span]:
    """Run the body in a span `name` continuing the work `headers` (a `carrier()`) came from:
    a child of its trace, with its request id, so the calls made inside join that trace."""
    token = otel_context.attach(propagate.extract(dict(headers)))
    previous = _request_id.set(headers.get(REQUEST_ID))
    try:
        with tracer.start_as_current_span(name, attributes=dict(attributes or {})) as span:
            yield span
    finally:
        _request_id.reset(previous)
        otel_context.detach(token)
