"""Reading the traces the mesh's collector keeps (shopmesh.collector): recent traces, one
trace's spans as a tree, the trace of an order. `shopmesh traces`, `shopmesh trace` and the
dashboard read through this; the collector is the only writer."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shopmesh.collector.spans import SpanRecord
from shopmesh.observe.grpcstatus import status_name as grpc_status_name

T = TypeVar("T")
ERROR = 2
"""OTLP's status code of a failed span."""
CLIENT = 3
"""OTLP's span kind of a call made (an Envoy's attempt at an upstream; apps make none)."""
ENVOY_COMPONENT = "proxy"
"""The `component` attribute Envoy puts on its spans."""


class TraceStoreError(Exception):
    """The collector's file is missing or unreadable; the message says what to do."""


@dataclass(frozen=True)
class TraceSummary:
    """One line of `shopmesh traces`."""

    trace_id: str
    root_service: str
    root_name: str
    start_ns: int
    duration_ns: int
    failed: bool
    span_count: int
    services: tuple[str, ...]
    dropped_spans: int = 0
    """Spans the collector received past its per-trace limit and did not keep."""

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "root": {"service": self.root_service, "name": self.root_name},
            "start_unix_nano": self.start_ns,
            "duration_ms": round(self.duration_ns / 1e6, 3),
            "failed": self.failed,
            "span_count": self.span_count,
            "services": list(self.services),
            "dropped_spans": self.dropped_spans,
        }


@dataclass
class SpanNode:
    """A span with its children, in start order; `attempt` numbers an Envoy upstream attempt
    among its siblings (1 for the first try, 2 for the first retry...)."""

    span: SpanRecord
    children: list[SpanNode] = field(default_factory=list)
    attempt: int | None = None
    attempts: int | None = None

    def walk(self, depth: int = 0) -> Iterator[tuple[int, SpanNode]]:
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)


def is_attempt(span: SpanRecord) -> bool:
    """An Envoy upstream span: one try at an upstream (`spawn_upstream_span`)."""
    return span.kind == CLIENT and span.attributes.get("component") == ENVOY_COMPONENT


def grpc_status(span: SpanRecord) -> str | None:
    """The gRPC status code of a span, as Envoy or the gRPC instrumentation recorded it."""
    for key in ("grpc.status_code", "rpc.grpc.status_code"):
        value = span.attributes.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def failed(span: SpanRecord) -> bool:
    """A span that ended in error: its status, or a non-zero gRPC status Envoy recorded."""
    if span.status_code == ERROR:
        return True
    status = grpc_status(span)
    return status is not None and status != "0"


def tree(spans: Sequence[SpanRecord]) -> list[SpanNode]:
    """The spans of one trace as trees: roots are spans whose parent is absent (the trace's
    root, or a span whose parent was not sampled or not yet received)."""
    nodes = {span.span_id: SpanNode(span) for span in sorted(spans, key=lambda s: s.start_ns)}
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.span.parent_span_id)
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        tries = [child for child in node.children if is_attempt(child.span)]
        for number, child in enumerate(tries, start=1):
            child.attempt, child.attempts = number, len(tries)
    return roots


def status_name(span: SpanRecord) -> str:
    """OK, the name of the gRPC status a span ended with, or `error` for a failed span
    without one."""
    code = grpc_status(span)
    if code is None:
        return "error" if failed(span) else "OK"
    return grpc_status_name(code)


@dataclass(frozen=True)
class WaterfallRow:
    """One line of a trace's waterfall (`shopmesh trace`, the dashboard): a span at its depth
    under its parent, where it starts from the trace's start, how it ended, and which try at
    an upstream it was."""

    span: SpanRecord
    depth: int
    offset_ns: int
    status: str
    failed: bool
    attempt: int | None
    attempts: int | None

    @property
    def duration_ns(self) -> int:
        return self.span.end_ns - self.span.start_ns

    def as_json(self) -> dict[str, Any]:
        return {
            "span_id": self.span.span_id,
            "parent_span_id": self.span.parent_span_id,
            "depth": self.depth,
            "service": self.span.service,
            "name": self.span.name,
            "offset_ms": self.offset_ns / 1e6,
            "duration_ms": self.duration_ns / 1e6,
            "status": self.status,
            "failed": self.failed,
            "attempt": self.attempt,
            "attempts": self.attempts,
        }


def waterfall_rows(spans: Sequence[SpanRecord]) -> list[WaterfallRow]:
    """Every span of a trace under its parent, in start order."""
    if not spans:
        return []
    start = min(span.start_ns for span in spans)
    return [
        WaterfallRow(
            span=node.span,
            depth=depth,
            offset_ns=node.span.start_ns - start,
            status=status_name(node.span),
            failed=failed(node.span),
            attempt=node.attempt,
            attempts=node.attempts,
        )
        for root in tree(spans)
        for depth, node in root.walk()
    ]


def _record(row: sqlite3.Row) -> SpanRecord:
    values = dict(row)
    values["attributes"] = json.loads(values["attributes"])
    return SpanRecord(**values)


Query = Callable[..., list[sqlite3.Row]]


class TraceReader:
    """Read-only queries on the collector's SQLite file, each on a connection of its own
    (the collector writes meanwhile; WAL lets readers see its last commit)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Query]:
        """A query function on one read-only connection; unreadable files become
        TraceStoreError, a file the collector has not set up yet reads as empty."""
        if not self.path.is_file():
            raise TraceStoreError(
                f"no traces in {self.path} yet: start the mesh with `shopmesh up` and send it "
                "a call (spans reach the collector within a second)"
            )
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error as error:
            raise TraceStoreError(f"cannot read {self.path}: {error}") from None
        db.row_factory = sqlite3.Row

        def query(sql: str, parameters: Sequence[object] = ()) -> list[sqlite3.Row]:
            return db.execute(sql, parameters).fetchall()

        try:
            yield query
        except sqlite3.OperationalError as error:
            if "no such table" not in str(error):
                raise TraceStoreError(f"cannot read {self.path}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise TraceStoreError(f"cannot read {self.path}: {error}") from None
        finally:
            db.close()

    def _read(self, read: Callable[[Query], T], empty: T) -> T:
        with self._reading() as query:
            return read(query)
        return empty  # the collector has not created its tables yet

    def spans(self, trace_id: str) -> list[SpanRecord]:
        def read(query: Query) -> list[SpanRecord]:
            rows = query(
                "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns", (trace_id.lower(),)
            )
            return [_record(row) for row in rows]

        return self._read(read, [])

    def recent(self, limit: int = 20) -> list[TraceSummary]:
        """The newest `limit` traces whose root span has arrived, newest first. Every Envoy
        and app exports on its own clock, and a root ends (so is exported) after the spans
        below it: until it arrives a trace is incomplete, its apparent root some span in it."""

        def read(query: Query) -> list[TraceSummary]:
            traces = query(
                "SELECT trace_id, dropped_spans FROM traces t WHERE EXISTS (SELECT 1 FROM spans"
                " s WHERE s.trace_id = t.trace_id AND s.parent_span_id = '')"
                " ORDER BY t.first_received_ns DESC LIMIT ?",
                (limit,),
            )
            ids = [row["trace_id"] for row in traces]
            spans: dict[str, list[SpanRecord]] = {trace_id: [] for trace_id in ids}
            marks = ", ".join("?" * len(ids))
            for row in query(f"SELECT * FROM spans WHERE trace_id IN ({marks})", ids):
                spans[row["trace_id"]].append(_record(row))
            summaries = (
                summarize(row["trace_id"], spans[row["trace_id"]], row["dropped_spans"])
                for row in traces
            )
            return [summary for summary in summaries if summary is not None]

        return self._read(read, [])

    def last(self) -> str | None:
        """The newest trace whose root span has arrived."""
        found = self.recent(1)
        return found[0].trace_id if found else None

    def of_order(self, order_id: str) -> str | None:
        """The trace that placed order `order_id` (its saga spans carry `order.id`)."""

        def read(query: Query) -> str | None:
            rows = query(
                "SELECT trace_id FROM spans WHERE json_extract(attributes, '$.\"order.id\"') = ?"
                " ORDER BY start_ns LIMIT 1",
                (order_id,),
            )
            return rows[0]["trace_id"] if rows else None

        return self._read(read, None)

    def count(self) -> int:
        def read(query: Query) -> int:
            return int(query("SELECT COUNT(*) AS n FROM traces")[0]["n"])

        return self._read(read, 0)


def summarize(
    trace_id: str, spans: Sequence[SpanRecord], dropped_spans: int = 0
) -> TraceSummary | None:
    """A trace's root operation, extent, outcome and size."""
    if not spans:
        return None
    roots = tree(spans)
    root = min((node.span for node in roots), key=lambda span: span.start_ns)
    start = min(span.start_ns for span in spans)
    end = max(span.end_ns for span in spans)
    return TraceSummary(
        trace_id=trace_id,
        root_service=root.service,
        root_name=root.name,
        start_ns=start,
        duration_ns=end - start,
        failed=failed(root),
        span_count=len(spans),
        services=tuple(sorted({span.service for span in spans})),
        dropped_spans=dropped_spans,
    )
