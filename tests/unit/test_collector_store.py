"""The collector's SQLite store (shopmesh.collector.store), read back the way `shopmesh traces`
and the dashboard read it (shopmesh.observe.traces): which traces it keeps, and each span once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shopmesh.collector.spans import SpanRecord
from shopmesh.collector.store import SpanStore
from shopmesh.observe.traces import TraceReader
from tests.support.spans import span


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "traces.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SpanStore]:
    opened = await SpanStore.open(path, max_traces=2)
    yield opened
    await opened.close()


def root(trace: str, span_id: str = "root") -> SpanRecord:
    """A root span of trace `trace` (a letter): its id is that letter 32 times."""
    return span(span_id, "", f"root of {trace}", 0, 10, trace_id=trace * 32)


def child(trace: str, span_id: str) -> SpanRecord:
    return span(span_id, "root", f"child {span_id}", 1, 5, trace_id=trace * 32)


def kept(path: Path) -> list[str]:
    """The letters of the traces kept, newest first."""
    return [summary.trace_id[0] for summary in TraceReader(path).recent()]


async def test_a_new_trace_drops_the_oldest(store: SpanStore, path: Path) -> None:
    for trace in "abc":
        await store.add([root(trace)])
    assert kept(path) == ["c", "b"]
    assert TraceReader(path).spans("a" * 32) == []


async def test_spans_of_a_kept_trace_drop_nothing(store: SpanStore, path: Path) -> None:
    await store.add([root("a")])
    await store.add([root("b")])
    await store.add([child("a", "late")])
    assert kept(path) == ["b", "a"]
    assert [s.span_id for s in TraceReader(path).spans("a" * 32)] == ["root", "late"]


async def test_a_dropped_trace_comes_back_as_the_newest(store: SpanStore, path: Path) -> None:
    for trace in "abc":
        await store.add([root(trace)])
    await store.add([child("a", "late")])
    assert kept(path) == ["c"]  # the late span's trace has no root span any more
    assert TraceReader(path).count() == 2
    assert [s.span_id for s in TraceReader(path).spans("a" * 32)] == ["late"]


async def test_one_export_of_many_new_traces_keeps_max_traces(store: SpanStore, path: Path) -> None:
    await store.add([root(trace) for trace in "abcdef"])
    assert TraceReader(path).count() == 2


async def test_a_span_sent_twice_is_kept_and_counted_once(store: SpanStore, path: Path) -> None:
    await store.add([root("a"), child("a", "x"), child("a", "x")])
    await store.add([child("a", "x"), child("a", "y")])
    (summary,) = TraceReader(path).recent()
    assert (summary.span_count, summary.dropped_spans) == (3, 0)
    assert [s.span_id for s in TraceReader(path).spans("a" * 32)] == ["root", "x", "y"]


async def test_an_export_of_more_traces_than_one_query_binds(path: Path) -> None:
    """Thousands of traces in one export (an exporter catching up after an outage), sent
    twice: every trace is kept, each span once."""
    traces = [f"{number:032x}" for number in range(1200)]
    spans = [span("root", "", "root", 0, 10, trace_id=trace) for trace in traces]
    store = await SpanStore.open(path, max_traces=len(traces))
    try:
        await store.add(spans)
        await store.add(spans)
    finally:
        await store.close()
    summaries = TraceReader(path).recent(limit=len(traces))
    assert sorted(summary.trace_id for summary in summaries) == traces
    assert {summary.span_count for summary in summaries} == {1}


async def test_a_new_trace_past_max_spans_counts_what_it_dropped(path: Path) -> None:
    store = await SpanStore.open(path, max_traces=10, max_spans=2)
    try:
        await store.add([root("a"), child("a", "x"), child("a", "y")])
    finally:
        await store.close()
    (summary,) = TraceReader(path).recent()
    assert (summary.span_count, summary.dropped_spans) == (2, 1)


def test_attributes_are_stored_as_json_with_sorted_keys() -> None:
    record = span("s", "", "n", 0, 1, attributes={"zone": "", "component": "proxy", "n": 2})
    assert record.attributes_json() == '{"component": "proxy", "n": 2, "zone": ""}'
    assert json.loads(record.attributes_json()) == record.attributes
