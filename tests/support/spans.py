"""Spans as the collector stores them, made by hand: a trace whose call to payments was
retried, for the tests of what reads traces (`shopmesh trace`, the dashboard)."""

from __future__ import annotations

from typing import Any

from shopmesh.collector.spans import SpanRecord
from shopmesh.observe.traces import CLIENT, ERROR

SERVER = 2
"""OTLP's span kind of a call served."""
MS = 1_000_000
HOSTILE_PATH = "/<img src=x onerror=alert(1)>"
"""A request path any caller of the gateway may send: it ends up in span names, which every
view of traces must show as text."""


def span(span_id: str, parent: str, name: str, start: int, end: int, **extra: Any) -> SpanRecord:
    """A span of orders' sidecar from `start` to `end` milliseconds, OK unless `extra` says
    otherwise."""
    values: dict[str, Any] = {
        "trace_id": "t" * 32,
        "span_id": span_id,
        "parent_span_id": parent,
        "service": "orders-sidecar",
        "name": name,
        "kind": SERVER,
        "start_ns": start * MS,
        "end_ns": end * MS,
        "status_code": 0,
        "status_message": "",
        "attributes": {},
    }
    values.update(extra)
    return SpanRecord(**values)


def attempt(span_id: str, start: int, end: int, status: str) -> SpanRecord:
    """One try of the sidecar's call to payments, ending with gRPC status `status`."""
    return span(
        span_id,
        "egress",
        "attempt svc_payments",
        start,
        end,
        kind=CLIENT,
        status_code=ERROR if status != "0" else 0,
        attributes={"component": "proxy", "grpc.status_code": status},
    )


RETRIED = [
    span("egress", "", "egress /shop.payments.v1.PaymentsService/Charge", 0, 30),
    attempt("try-2", 12, 30, "0"),
    attempt("try-1", 1, 10, "14"),
    span("late", "never-arrived", "inbound /shop.users.v1.UsersService/GetUser", 5, 6),
]
"""A charge that failed with UNAVAILABLE and succeeded when retried (the tries out of start
order), and a span whose parent never arrived."""
