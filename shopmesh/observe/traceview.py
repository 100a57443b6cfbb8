"""Traces in the terminal: the list of `shopmesh traces` and the waterfall of `shopmesh
trace`."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from shopmesh.collector.spans import SpanRecord
from shopmesh.observe.traces import TraceSummary, WaterfallRow, waterfall_rows

BAR_WIDTH = 32
# "/shop.users.v1.UsersService/GetUser" reads as "UsersService/GetUser" in a waterfall.
_METHOD_PACKAGE = re.compile(r"/(?:[a-z0-9_]+\.)+(?=[A-Z]\w*/)")


def short(name: str) -> str:
    """A span name with the package of a gRPC method left out."""
    return _METHOD_PACKAGE.sub("", name)


def _milliseconds(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


def traces_table(summaries: Sequence[TraceSummary]) -> Table:
    table = Table(title="recent traces (newest first)")
    for column in ("trace id", "root", "duration", "status", "spans", "when"):
        table.add_column(column, no_wrap=column != "root")
    for summary in summaries:
        when = datetime.datetime.fromtimestamp(summary.start_ns / 1e9).strftime("%H:%M:%S.%f")
        table.add_row(
            summary.trace_id,
            Text(f"{summary.root_service}: {short(summary.root_name)}"),
            _milliseconds(summary.duration_ns),
            Text("error", "red") if summary.failed else Text("ok", "green"),
            str(summary.span_count)
            + (f" (+{summary.dropped_spans} dropped)" if summary.dropped_spans else ""),
            when[:-3],
        )
    return table


def _bar(row: WaterfallRow, total: int) -> Text:
    """The span's extent on a line of BAR_WIDTH cells spanning the whole trace."""
    scale = BAR_WIDTH / max(total, 1)
    left = min(int(row.offset_ns * scale), BAR_WIDTH - 1)
    width = min(max(1, round(row.duration_ns * scale)), BAR_WIDTH - left)
    bar = Text(" " * left)
    bar.append("█" * width, "red" if row.failed else "cyan")
    bar.append(" " * (BAR_WIDTH - left - width))
    return bar


def _status(row: WaterfallRow) -> Text:
    return Text(row.status, "red" if row.failed else "green")


def waterfall(trace_id: str, spans: Sequence[SpanRecord]) -> Table:
    """Every span of the trace under its parent: service, operation, start offset, a bar of
    its extent, duration, status, and which attempt it was. Names are shown as plain text:
    they hold request paths that outside callers choose."""
    start = min(span.start_ns for span in spans)
    total = max(span.end_ns for span in spans) - start
    table = Table(title=f"trace {trace_id} · {len(spans)} spans · {_milliseconds(total)}")
    for column in ("service", "operation", "start", "", "duration", "status", "attempt"):
        table.add_column(column, no_wrap=True, justify="right" if column == "start" else "left")
    for row in waterfall_rows(spans):
        table.add_row(
            Text(row.span.service),
            Text("  " * row.depth + short(row.span.name)),
            f"+{row.offset_ns / 1e6:.1f}",
            _bar(row, total),
            _milliseconds(row.duration_ns),
            _status(row),
            "" if row.attempt is None else f"{row.attempt}/{row.attempts}",
        )
    return table
