"""`shopmesh load` in a terminal: a live view of a LoadRun while it runs (rich.live), and its
summary tables at the end."""

from __future__ import annotations

import asyncio
import signal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shopmesh.observe.load import LoadRun, LoadSummary

REFRESH_SECONDS = 0.25
RATE_LIMITED = "RESOURCE_EXHAUSTED"


async def watch(run: LoadRun, console: Console) -> LoadSummary:
    """Run `run` with a live view on `console`; Ctrl-C stops it early (the calls in flight are
    cancelled). Its final summary."""
    loop = asyncio.get_running_loop()
    # Ctrl-C becomes stop(): the run ends cleanly and its summary is still printed.
    loop.add_signal_handler(signal.SIGINT, run.stop)
    try:
        task = asyncio.create_task(run.run())
        # Transient: at the end the summary takes the live view's place (and where stdout is
        # no terminal, only the summary is printed).
        view = Live(live_view(run.snapshot()), console=console, auto_refresh=False, transient=True)
        with view:
            while not task.done():
                await asyncio.wait({task}, timeout=REFRESH_SECONDS)
                view.update(live_view(run.snapshot()), refresh=True)
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def live_view(summary: LoadSummary) -> RenderableType:
    """Elapsed time against the duration, calls sent, in flight, skipped, the OK rate, and the
    answers per RPC so far."""
    duration = summary.settings.duration
    elapsed = min(summary.elapsed, duration)
    header = Table.grid(padding=(0, 1))
    header.add_row(
        ProgressBar(total=duration, completed=elapsed, width=30),
        Text(f"{elapsed:.1f} / {duration:g} s · {summary.state} · through {summary.gateway}"),
    )
    counts = Text(
        f"sent {summary.sent} · in flight {summary.in_flight} · "
        f"skipped {summary.skipped} (client saturated) · OK {_percent(summary.ok_rate)}"
    )
    table = Table(box=None, pad_edge=False)
    for column in ("rpc", "answered", "OK", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "rpc" else "right")
    for rpc in summary.rpcs:
        table.add_row(
            rpc.method, str(rpc.count), _percent(rpc.success_rate), _ms(rpc.p50_ms), _ms(rpc.p99_ms)
        )
    return Group(header, counts, table)


def summary_view(summary: LoadSummary) -> RenderableType:
    """Per RPC: calls, success rate (OK share), p50, p99 and the status codes; PlaceOrder's
    outcomes per payment token; what was sent, skipped, and why the run ended."""
    table = Table(title="load summary", title_justify="left")
    for column in ("rpc", "calls", "OK", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "rpc" else "right", no_wrap=True)
    table.add_column("status codes")
    for rpc in summary.rpcs:
        codes = ", ".join(f"{code} {count}" for code, count in rpc.codes.items())
        table.add_row(
            rpc.method,
            str(rpc.count),
            _percent(rpc.success_rate),
            _ms(rpc.p50_ms),
            _ms(rpc.p99_ms),
            codes or "-",
        )
    parts: list[RenderableType] = [table]
    if summary.checkouts:
        orders = Table(title="PlaceOrder by payment token", title_justify="left")
        orders.add_column("token", no_wrap=True)
        orders.add_column("outcomes")
        for token, outcomes in summary.checkouts.items():
            orders.add_row(token, ", ".join(f"{name} {n}" for name, n in outcomes.items()))
        parts.append(orders)
    rate = summary.sent / summary.elapsed if summary.elapsed > 0 else 0.0
    parts.append(
        Text(
            f"{summary.sent} calls in {summary.elapsed:.1f} s ({rate:.1f}/s) through "
            f"{summary.gateway}: {summary.completed} answered, OK {_percent(summary.ok_rate)}\n"
            f"{summary.skipped} skipped (client saturated); ended by {summary.stop_reason}"
        )
    )
    if any(RATE_LIMITED in rpc.codes for rpc in summary.rpcs):
        parts.append(
            Text(
                f"{RATE_LIMITED} is most likely the gateway's local rate limit "
                "(envoy/mesh.yaml gateway.local_rate_limit) refusing calls above its rate"
            )
        )
    return Group(*parts)
