"""The collector's SQLite file: the spans of the last `max_traces` traces, written through
the services' store API (one writer thread, never on the event loop), not durable: a power
loss may cost the last spans received, never the file. Readers (`shopmesh traces`, the
dashboard) open the file on their own: shopmesh.observe.traces.

An export is one write of a few statements, whatever its spans: the span counts of its
traces in one query, its spans inserted per trace (a span sent twice is ignored, so not
counted), every trace's row upserted at once, and the traces counted, to drop the oldest, only
when one of them is new."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from services.common.database import Database
from services.common.sql import Connection
from shopmesh.collector.spans import SpanRecord

MIGRATIONS = [
    """
    CREATE TABLE spans (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT NOT NULL,
        service TEXT NOT NULL,
        name TEXT NOT NULL,
        kind INTEGER NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        status_code INTEGER NOT NULL,
        status_message TEXT NOT NULL,
        -- A JSON object.
        attributes TEXT NOT NULL,
        PRIMARY KEY (trace_id, span_id)
    );
    -- One row per trace, for listing recent ones and for dropping the oldest.
    CREATE TABLE traces (
        trace_id TEXT PRIMARY KEY,
        first_received_ns INTEGER NOT NULL,
        last_received_ns INTEGER NOT NULL,
        span_count INTEGER NOT NULL DEFAULT 0,
        -- Spans received past max_spans, not kept.
        dropped_spans INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX traces_by_age ON traces (first_received_ns);
    """,
]


DEFAULT_MAX_TRACES = 1000
"""Traces a collector keeps unless told (the oldest are dropped first)."""
MAX_SPANS_PER_TRACE = 2000
"""A checkout is about 40 spans; an order stuck for an hour adds a recovery attempt's spans to
its trace every few seconds, which this bounds."""


class SpanStore:
    """Spans of the last `max_traces` traces, at most `max_spans` each; older traces are
    dropped as new ones arrive."""

    def __init__(
        self, database: Database, max_traces: int, max_spans: int = MAX_SPANS_PER_TRACE
    ) -> None:
        self._db = database
        self.max_traces = max_traces
        self.max_spans = max_spans

    @classmethod
    async def open(
        cls, path: Path, max_traces: int, max_spans: int = MAX_SPANS_PER_TRACE
    ) -> SpanStore:
        # Traces are worth less than an fsync per export (see the module docstring).
        database = await Database.open(path, MIGRATIONS, readers=1, durable=False)
        return cls(database, max_traces, max_spans)

    async def close(self) -> None:
        await self._db.close()

    async def add(self, spans: Sequence[SpanRecord]) -> None:
        """Store `spans` (a span sent twice is kept once), at most `max_spans` a trace, and
        keep only the newest traces."""
        now = time.time_ns()
        by_trace: dict[str, list[SpanRecord]] = {}
        for span in spans:
            by_trace.setdefault(span.trace_id, []).append(span)

        def add(db: Connection) -> None:
            counts = _span_counts(db, list(by_trace))
            traces = []
            for trace_id, received in by_trace.items():
                fitting = received[: max(self.max_spans - counts.get(trace_id, 0), 0)]
                stored = db.executemany(_INSERT_SPAN, map(_row, fitting)).rowcount if fitting else 0
                traces.append((trace_id, now, now, stored, len(received) - len(fitting)))
            db.executemany(_UPSERT_TRACE, traces)
            # Only a new trace can take the count past max_traces.
            if len(counts) < len(by_trace):
                self._drop_oldest(db)

        await self._db.write(add)

    def _drop_oldest(self, db: Connection) -> None:
        (count,) = db.execute("SELECT COUNT(*) FROM traces").fetchone()
        excess = count - self.max_traces
        if excess <= 0:
            return
        oldest = [
            row[0]
            for row in db.execute(
                "SELECT trace_id FROM traces ORDER BY first_received_ns LIMIT ?", (excess,)
            )
        ]
        db.executemany("DELETE FROM spans WHERE trace_id = ?", [(t,) for t in oldest])
        db.executemany("DELETE FROM traces WHERE trace_id = ?", [(t,) for t in oldest])


_INSERT_SPAN = "INSERT OR IGNORE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_TRACE = (
    "INSERT INTO traces (trace_id, first_received_ns, last_received_ns, span_count,"
    " dropped_spans) VALUES (?, ?, ?, ?, ?) ON CONFLICT (trace_id) DO UPDATE SET"
    " last_received_ns = excluded.last_received_ns,"
    " span_count = span_count + excluded.span_count,"
    " dropped_spans = dropped_spans + excluded.dropped_spans"
)
# Well under SQLite's limit of bound parameters in one statement.
_IDS_PER_QUERY = 500


def _span_counts(db: Connection, trace_ids: Sequence[str]) -> dict[str, int]:
    """How many spans each of `trace_ids` already has; a new trace is absent."""
    counts: dict[str, int] = {}
    for start in range(0, len(trace_ids), _IDS_PER_QUERY):
        chunk = trace_ids[start : start + _IDS_PER_QUERY]
        marks = ", ".join("?" * len(chunk))
        query = f"SELECT trace_id, span_count FROM traces WHERE trace_id IN ({marks})"
        counts.update((row[0], row[1]) for row in db.execute(query, chunk))
    return counts


def _row(span: SpanRecord) -> tuple[object, ...]:
    return (
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        span.service,
        span.name,
        span.kind,
        span.start_ns,
        span.end_ns,
        span.status_code,
        span.status_message,
        span.attributes_json(),
    )
