"""`shopmesh stat` in a terminal, in the spirit of `linkerd viz stat`: one table of the services
(the gateway first) and one of the edges between them, each row a window's success rate,
requests per second, latency quantiles, failures and business outcomes by status, retries,
circuit-breaker overflows, outlier ejections and the fault in force; `watch` keeps them live."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Mapping

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shopmesh.observe.stats import EdgeStats, MeshStats, Sampler, ServiceStats, Traffic
from shopmesh.topology import GATEWAY

HEALTHY_SUCCESS = 0.99
DEGRADED_SUCCESS = 0.95
FULL_WIDTH = 200
"""Terminal columns below which the tables are compact: status counts without their names, no
p95, and no overflow, ejection, refusal or fault column while it is empty."""
LEFT = {"service", "from", "to", "failures", "business", "refused", "fault"}
COMPACT_DROPS = {"p95"}
OPTIONAL = {"overflows", "ejections", "ejected", "refused", "fault"}


def selected(stats: MeshStats, service: str | None) -> MeshStats:
    """Only `service` and the edges into and out of it (everything when None); the gateway's
    own numbers stay."""
    if service is None:
        return stats
    return MeshStats(
        window=stats.window,
        ended=stats.ended,
        gateway=stats.gateway,
        services={service: stats.services[service]},
        edges=tuple(e for e in stats.edges if service in (e.caller, e.callee)),
        unreachable=stats.unreachable,
    )


def success(share: float | None) -> Text:
    if share is None:
        return Text("-")
    colour = (
        "green" if share >= HEALTHY_SUCCESS else "yellow" if share >= DEGRADED_SUCCESS else "red"
    )
    return Text(f"{100 * share:.2f}%", style=colour)


def duration_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def statuses(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "-"


def retries(traffic: Traffic) -> str:
    if not traffic.retries:
        return "-"
    return f"{traffic.retries} ({traffic.retry_successes} ok)"


def count(value: int) -> str:
    return str(value) if value else "-"


Row = dict[str, Text | str]


def traffic_row(traffic: Traffic, compact: bool) -> Row:
    """The cells of one service's or edge's traffic; compact: status counts without names."""
    failures = count(traffic.failed) if compact else statuses(traffic.failures)
    business = count(sum(traffic.business.values())) if compact else statuses(traffic.business)
    return {
        "success": success(traffic.success_rate),
        "rps": f"{traffic.rps:.1f}",
        "p50": duration_ms(traffic.p50_ms),
        "p95": duration_ms(traffic.p95_ms),
        "p99": duration_ms(traffic.p99_ms),
        "failures": Text(failures, style="red" if traffic.failures else ""),
        "business": business,
        "retries": retries(traffic),
        "overflows": count(traffic.overflows),
        "ejections": count(traffic.ejections),
    }


def table(title: str, rows: list[Row], compact: bool) -> Table:
    """`rows` as a table; compact, without COMPACT_DROPS and the OPTIONAL columns that are
    empty."""
    columns = list(rows[0]) if rows else []
    if compact:
        columns = [
            c
            for c in columns
            if c not in COMPACT_DROPS
            and (c not in OPTIONAL or any(str(row[c]) not in ("-", "") for row in rows))
        ]
    shown = Table(title=title, title_justify="left")
    for column in columns:
        if column in LEFT:
            shown.add_column(column, justify="left", no_wrap=column != "fault")
        else:
            shown.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        shown.add_row(*(row[column] for column in columns))
    return shown


def services_rows(stats: MeshStats, compact: bool) -> list[Row]:
    """The gateway and each service (inbound at its sidecars, every replica)."""
    gateway = stats.gateway
    refused = [
        f"{n} {what}"
        for what, n in (("rate-limited", gateway.rate_limited), ("unrouted", gateway.unrouted))
        if n
    ]
    rows = [
        {
            "service": GATEWAY,
            "pods": "-",
            **traffic_row(gateway.traffic, compact),
            "refused": ", ".join(refused) or "-",
            "fault": "",
        }
    ]
    rows.extend(service_row(service, compact) for service in stats.services.values())
    return rows


def service_row(service: ServiceStats, compact: bool) -> Row:
    return {
        "service": service.name,
        "pods": f"{len(service.pods)}/{service.replicas}",
        **traffic_row(service.inbound, compact),
        "refused": count(service.refused),
        "fault": Text(service.fault or "", style="magenta"),
    }


def edge_row(edge: EdgeStats, compact: bool) -> Row:
    """A caller -> callee, as the caller's Envoy saw it (retries included)."""
    return {
        "from": edge.caller,
        "to": edge.callee,
        **traffic_row(edge.traffic, compact),
        "ejected": count(edge.traffic.ejected),
    }


def stats_view(stats: MeshStats | None, window: float, compact: bool = False) -> RenderableType:
    """Both tables under a line saying which window they cover (shorter than `window` while a
    watch has not sampled that long yet); `compact` for a narrow terminal."""
    if stats is None:
        return Text("taking the first samples...")
    covered = f"last {stats.window:.1f} s"
    if stats.window < 0.95 * window:
        covered += f" (of {window:g} s, still sampling)"
    header = Text(f"{covered}, to {stats.ended.astimezone():%H:%M:%S}")
    if stats.unreachable:
        header.append(f" · not read: {', '.join(stats.unreachable)}", style="red")
    return Group(
        header,
        table("services (inbound)", services_rows(stats, compact), compact),
        table("edges (at the caller)", [edge_row(e, compact) for e in stats.edges], compact),
    )


async def refreshing(
    sampler: Sampler, window: float, every: float = 1.0
) -> AsyncIterator[MeshStats | None]:
    """The stats of the last `window` seconds, sampled every `every` seconds, until Ctrl-C
    (None until there are two samples)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        while not stop.is_set():
            yield await sampler.stats(window)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def watch(
    sampler: Sampler, window: float, service: str | None, console: Console, every: float = 1.0
) -> None:
    """Show the last `window` seconds of `service` (or of every service) live, until Ctrl-C."""
    with Live(stats_view(None, window), console=console, auto_refresh=False) as live:
        async for stats in refreshing(sampler, window, every):
            shown = None if stats is None else selected(stats, service)
            compact = console.width < FULL_WIDTH
            live.update(stats_view(shown, window, compact), refresh=True)
