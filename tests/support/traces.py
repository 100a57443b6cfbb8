"""The traces a mesh's collector received, waited for: Envoy and the apps export in batches
(every 500 ms in the mesh), so a trace is complete some time after its call returned."""

from __future__ import annotations

from collections.abc import Collection

from shopmesh.collector.spans import SpanRecord
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.traces import TraceReader
from tests.support.polling import eventually

TRACE_DEADLINE = 20.0
"""Seconds for a trace's spans to arrive: two flush intervals on an idle machine."""
APPS = ("users", "inventory", "payments", "orders", "notifications")
CHECKOUT_SERVICES = (
    "gateway",
    *APPS,
    *(f"{app}-sidecar" for app in APPS),
)
"""Every process a checkout passes through (notifications through the outbox relay)."""
TRACE_ID_HEADER = "x-trace-id"


def reader(mesh: RunningMesh) -> TraceReader:
    return TraceReader(mesh.paths.traces)


async def trace_of(
    mesh: RunningMesh,
    trace_id: str,
    services: Collection[str] = (),
    names: Collection[str] = (),
) -> list[SpanRecord]:
    """The spans of `trace_id` once it is whole — its root arrived, and the parent of every
    span that did — with spans from every one of `services` and named every one of `names`.
    (Each process exports on its own clock: a span can arrive before its parent.)"""
    spans: list[SpanRecord] = []

    async def arrived() -> bool:
        spans[:] = reader(mesh).spans(trace_id)
        ids = {span.span_id for span in spans} | {""}
        whole = bool(spans) and all(span.parent_span_id in ids for span in spans)
        has_root = any(span.parent_span_id == "" for span in spans)
        seen = {span.service for span in spans}
        span_names = {span.name for span in spans}
        return whole and has_root and set(services) <= seen and set(names) <= span_names

    await eventually(
        arrived, TRACE_DEADLINE, f"trace {trace_id} with spans of {sorted(services)}", 0.1
    )
    return spans


def trace_id_of(metadata: object) -> str:
    """The trace id the gateway returned in a call's initial metadata."""
    found = dict(metadata or ()).get(TRACE_ID_HEADER)  # type: ignore[call-overload]
    assert isinstance(found, str), f"no {TRACE_ID_HEADER}: {metadata}"
    assert len(found) == 32, found
    return found
