"""OpenTelemetry gRPC instrumentation. Spans go to the global tracer provider, which is a no-op
until an OpenTelemetry SDK is installed and configured (e.g. with OTEL_* variables), so the
services pay almost nothing for it by default."""

from __future__ import annotations

from grpc import aio
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor


def server_interceptors() -> list[aio.ServerInterceptor]:
    """Interceptors that open a server span per incoming RPC."""
    return [aio_server_interceptor()]


def client_interceptors() -> list[aio.ClientInterceptor]:
    """Interceptors that open a client span per outgoing RPC and propagate trace context."""
    return list(aio_client_interceptors())
