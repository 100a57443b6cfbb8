"""The mesh's trace collector as the real process `shopmesh up` starts: it takes what the
OpenTelemetry SDK's OTLP/gRPC exporter sends over a Unix socket, keeps only the newest traces,
and exits cleanly on SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from shopmesh.collector.spans import SpanRecord
from shopmesh.collector.store import SpanStore
from shopmesh.observe.traces import TraceReader
from tests.support.collector import running_collector
from tests.support.mesh import short_temp_dir
from tests.support.polling import eventually_sync


@pytest.fixture
def collector() -> Iterator[tuple[Path, Path]]:
    """A collector keeping 3 traces: (its socket, its database); stopped at teardown."""
    directory = short_temp_dir("smc-")
    socket, database = directory / "c.sock", directory / "traces.db"
    with running_collector(f"unix:{socket}", database, socket.exists, max_traces=3):
        yield socket, database


def test_the_collector_keeps_the_newest_traces(collector: tuple[Path, Path]) -> None:
    socket, database = collector
    provider = TracerProvider(resource=Resource.create({"service.name": "tester"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"unix://{socket}", insecure=True))
    )
    tracer = provider.get_tracer("test")
    sent = []
    try:
        for number in range(10):
            attributes = {"order.id": f"o{number}"}
            with (
                tracer.start_as_current_span(f"root {number}") as root,
                tracer.start_as_current_span("child", attributes=attributes),
            ):
                pass
            sent.append(format(root.get_span_context().trace_id, "032x"))
    finally:
        provider.shutdown()
    reader = TraceReader(database)
    eventually_sync(lambda: reader.of_order("o9") is not None, 10.0, "the last trace to arrive")

    kept = reader.recent(limit=10)
    assert [summary.trace_id for summary in kept] == sent[:-4:-1]
    assert reader.count() == 3
    assert [summary.root_name for summary in kept] == ["root 9", "root 8", "root 7"]
    assert all(summary.span_count == 2 for summary in kept)
    assert reader.spans(sent[0]) == []
    assert reader.last() == sent[-1]
    assert reader.of_order("o9") == sent[-1]


@pytest.mark.asyncio
async def test_a_trace_keeps_at_most_max_spans(tmp_path: Path) -> None:
    """A trace that keeps growing (an order retried for an hour adds spans every few seconds)
    stops at the per-trace limit; what is dropped is counted."""
    store = await SpanStore.open(tmp_path / "traces.db", max_traces=10, max_spans=3)
    try:
        root = span_record("root", "")
        await store.add([root, span_record("a", "root")])
        await store.add([span_record("a", "root")])  # sent again: kept once, not counted
        await store.add([span_record("b", "root"), span_record("c", "root")])
    finally:
        await store.close()
    reader = TraceReader(tmp_path / "traces.db")
    assert [span.span_id for span in reader.spans("f" * 32)] == ["root", "a", "b"]
    (summary,) = reader.recent()
    assert (summary.span_count, summary.dropped_spans) == (3, 1)


def span_record(span_id: str, parent: str) -> SpanRecord:
    started = {"root": 0, "a": 1, "b": 2, "c": 3}[span_id]
    return SpanRecord(
        trace_id="f" * 32,
        span_id=span_id,
        parent_span_id=parent,
        service="orders",
        name=f"span {span_id}",
        kind=1,
        start_ns=started,
        end_ns=started + 10,
        status_code=0,
        status_message="",
        attributes={},
    )
