"""The report: machine, tools and Envoy memory, every figure as tables, and what is amiss."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from rich import box
from rich.console import Console
from rich.table import Table

from scripts.bench.capacity import Capacity
from scripts.bench.h2load import ROUNDS, WARM_UP_REQUESTS, Shape, run_tool
from scripts.bench.open_loop import percentile
from scripts.bench.settings import CALLEE, CALLER
from scripts.bench.sidecar import FIXED_RATE, FixedRate, Memory, Pinned
from scripts.bench.unary import Maximum, MeshLogs, Unary
from shopmesh.envoy.edge import RATE_LIMIT_ENABLED

if TYPE_CHECKING:
    from scripts.bench.relay import RelayLag

FOREIGN_CPU_LIMIT = 0.05
"""Above this share of CPU time used by other processes during the run, it warns."""


# --- machine, memory, report ----------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return [
        ("date (UTC)", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPUs (nproc)", str(len(os.sched_getaffinity(0)))),
        ("CPU model", model[1].strip() if model else "unknown"),
        ("memory", f"{int(memory[1]) / 1024**2:.1f} GiB" if memory else "unknown"),
        ("kernel", f"{platform.system()} {platform.release()}"),
        # Other work on the machine skews every figure; this shows whether there was any.
        ("load average before (1/5/15 min)", " ".join(f"{v:.2f}" for v in os.getloadavg())),
    ]


async def tools(envoy: Path) -> list[tuple[str, str]]:
    envoy_output = await run_tool([str(envoy), "--version"], 30)
    envoy_version = re.search(r"version: \S+?/([\d.]+)/", envoy_output)
    h2load = (await run_tool(["h2load", "--version"], 30)).strip()
    return [
        ("envoy", envoy_version[1] if envoy_version else envoy_output.strip()),
        ("h2load", h2load.removeprefix("h2load ")),
        ("python", platform.python_version()),
        ("grpcio", grpc.__version__),
    ]


def ms(value: float) -> str:
    return f"{value:.2f} ms"


@dataclass(frozen=True)
class Figures:
    about: list[tuple[str, str]]
    startup: float
    pods: int
    unary: Unary
    fixed: FixedRate
    pinned: Pinned | None
    memory: Memory
    capacity: Capacity
    logs: MeshLogs
    frame_size: int
    """Bytes of one complete GetUserResponse gRPC frame."""
    direct_calls: tuple[int, int]
    """(calls, failed) h2load sent straight at the app, over every run."""
    mesh_calls: tuple[int, int]
    """(calls, failed) h2load sent into the caller's egress, over every run."""
    retries: int
    overflows: int
    seconds: float
    """Each h2load run's length."""
    foreign_cpu: float
    """Share of the machine's CPU time that processes outside the benchmark used during it."""
    relay: RelayLag


def signed_ms(value: float) -> str:
    return f"{value:+.2f} ms"


def two_columns(rows: Sequence[tuple[str, str]], right: bool = False) -> Table:
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column()
    table.add_column(justify="right" if right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def statuses(counts: Counter[str]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())) or "none"


def render(figures: Figures, console: Console) -> None:
    """Print every figure as tables."""
    console.print("[bold]Machine and tools[/bold]")
    console.print(
        two_columns(
            [
                *figures.about,
                ("CPU used by other processes during", f"{figures.foreign_cpu:.1%}"),
                ("mesh start (`shopmesh up`)", f"{figures.startup:.2f} s"),
            ]
        )
    )
    render_unary(figures, console)
    render_memory(figures.memory, console)
    render_capacity(figures.capacity, console)


def render_unary(figures: Figures, console: Console) -> None:
    unary, fixed, pinned = figures.unary, figures.fixed, figures.pinned
    console.print("[bold]Unary users.GetUser (a SQLite read), h2load over Unix sockets[/bold]")
    table = Table(box=box.SIMPLE)
    table.add_column("")
    table.add_column("direct\n(app socket)", justify="right")
    table.add_column("orders sidecar\n> mTLS >\nusers sidecar", justify="right")
    table.add_column("the sidecars\nadd", justify="right")
    table.add_row(
        f"max throughput (median of {ROUNDS})",
        f"{unary.direct_max.rate:.0f} req/s",
        f"{unary.mesh_max.rate:.0f} req/s",
        f"ratio {unary.ratio:.2f}",
    )
    table.add_row("  rounds ranged", unary.direct_max.spread(), unary.mesh_max.spread(), "")
    if pinned is not None:
        direct = Maximum(pinned.direct)
        through = Maximum(pinned.mesh)
        table.add_row(
            f"max, app alone on CPU {pinned.cores.app}",
            f"{direct.rate:.0f} req/s",
            f"{through.rate:.0f} req/s",
            f"ratio {pinned.ratio:.2f}",
        )
        table.add_row("  rounds ranged", direct.spread(), through.spread(), "")
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        table.add_row(
            f"{name} at {FIXED_RATE:.0f} req/s (median of {ROUNDS})",
            ms(fixed.percentile(False, share)),
            ms(fixed.percentile(True, share)),
            signed_ms(fixed.added_ms(share)),
        )
    table.add_row(
        "calls sent / failed",
        "{} / {}".format(*figures.direct_calls),
        "{} / {}".format(*figures.mesh_calls),
        "",
    )
    console.print(table)
    cpu = ", ".join(
        f"{pod} {fixed.cpu(pod):.3f} (idle: {fixed.cpu(pod, idle=True):.3f})"
        for pod in (CALLER, CALLEE)
    )
    console.print("[bold]How the unary figures were measured[/bold]")
    console.print(
        two_columns(
            [
                (
                    "max throughput",
                    f"{Shape.saturating().describe()}; {WARM_UP_REQUESTS} warm-up calls per "
                    f"path, then {ROUNDS} alternating rounds of ~{figures.seconds:.0f} s per "
                    f"path ({unary.direct_max.requests} / {unary.mesh_max.requests} calls)",
                ),
                (
                    "pinned",
                    "users app alone on one CPU; both Envoys, h2load (taskset) and every other "
                    "mesh process on the other"
                    if pinned
                    else "skipped: fewer than 2 CPUs",
                ),
                (
                    f"latency at {FIXED_RATE:.0f} req/s",
                    f"{fixed.shape.describe()}; {ROUNDS} alternating rounds of "
                    f"{fixed.rounds[0].direct.requests} calls per path",
                ),
                (
                    "Envoy CPU-s per 1,000 requests",
                    f"{cpu}; utime + stime from /proc during the mesh runs at "
                    f"{FIXED_RATE:.0f} req/s (idle: the same Envoys during the direct runs)",
                ),
                (
                    "OK calls (h2load: HTTP 2xx)",
                    f"every OK answer is the same {figures.frame_size}-byte "
                    "GetUserResponse frame, an error has none: h2load's DATA bytes count them "
                    "(throughput counts only OK calls)",
                ),
                ("grpc-status at orders' egress", statuses(figures.logs.caller)),
                ("grpc-status at users' inbound", statuses(figures.logs.callee)),
                (
                    "orders -> users retries / overflows",
                    f"{figures.retries} / {figures.overflows} (circuit breaker)",
                ),
            ]
        )
    )


def render_memory(memory: Memory, console: Console) -> None:
    console.print(
        f"[bold]Envoy memory after the run[/bold] ({memory.sharing} Envoys share the binary's "
        "file-backed pages)"
    )
    table = Table(box=box.SIMPLE)
    table.add_column("envoy")
    table.add_column("RSS", justify="right")
    table.add_column("anonymous", justify="right")
    table.add_column("anonymous / bare", justify="right")
    rows = [("bare (1 listener, 1 cluster)", memory.bare), *memory.sidecars.items()]
    for name, figures in rows:
        table.add_row(
            name,
            f"{figures.rss_kib / 1024:.1f} MiB",
            f"{figures.anonymous_kib / 1024:.1f} MiB",
            f"{figures.anonymous_kib / memory.bare.anonymous_kib:.2f}x",
        )
    console.print(table)


def render_capacity(capacity: Capacity, console: Console) -> None:
    closed, paced = capacity.closed, capacity.paced
    console.print(
        "[bold]Checkout: PlaceOrder through the gateway[/bold] (saga: user, reserve and price, "
        f"charge, commit; gateway rate limits off: {RATE_LIMIT_ENABLED} = "
        f"{capacity.rate_limit[0]}, then {capacity.rate_limit[-1]})"
    )
    console.print(
        two_columns(
            [
                ("closed loop: orders (concurrent workers)", f"{closed.orders} ({closed.workers})"),
                ("  throughput", f"{capacity.rate:.1f} orders/s"),
                ("  p50 / p99", f"{ms(closed.percentile(0.5))} / {ms(closed.percentile(0.99))}"),
                ("  outcomes", ", ".join(f"{k}: {v}" for k, v in closed.outcomes.most_common())),
                (
                    f"open loop at {paced.rate:.1f}/s for {paced.seconds:.0f} s",
                    f"{len(paced.calls)} calls",
                ),
                (
                    "  p50 / p99",
                    f"{ms(percentile([c.latency_ms for c in paced.admitted], 0.5))} / "
                    f"{ms(paced.admitted_p99())}",
                ),
                ("  outcomes", ", ".join(f"{k}: {v}" for k, v in paced.outcomes().most_common())),
            ],
            right=True,
        )
    )
    console.print("[bold]Where a checkout's CPU goes[/bold] (closed loop, per checkout)")
    table = Table(box=box.SIMPLE)
    table.add_column("process")
    table.add_column("CPU ms", justify="right")
    for name, value in sorted(capacity.cpu_ms.items(), key=lambda item: -item[1]):
        table.add_row(name, f"{value:.2f}")
    table.add_row("[bold]all[/bold]", f"[bold]{sum(capacity.cpu_ms.values()):.2f}[/bold]")
    console.print(table)


def problems(figures: Figures) -> list[str]:
    """What makes the figures less than clean: failed calls, or logs that disagree."""
    logs, closed = figures.logs, figures.capacity.closed
    found = []
    # Not the load average: it trails the last minute, which may hold an earlier run.
    if figures.foreign_cpu > FOREIGN_CPU_LIMIT:
        found.append(
            f"the machine was busy: other processes used {figures.foreign_cpu:.0%} of the CPU "
            "time during the run, which skews every figure"
        )
    for path, (calls, failed) in (("direct", figures.direct_calls), ("mesh", figures.mesh_calls)):
        if failed:
            found.append(
                f"{failed} of {calls} GetUser calls ({path}) failed; the latencies include them"
            )
    logged_failures = logs.caller.total() - logs.caller["0"]
    if (logs.caller.total(), logged_failures) != figures.mesh_calls:
        found.append(
            f"orders' egress logged {logs.caller.total()} h2load calls, {logged_failures} "
            f"failed; h2load counted {figures.mesh_calls[0]}, {figures.mesh_calls[1]} failed"
        )
    if closed.outcomes["ORDER_STATUS_CONFIRMED"] != closed.orders:
        found.append(f"not every order was confirmed: {dict(closed.outcomes)}")
    if figures.capacity.paced.generator_bound:
        found.append("the open-loop checkout generator fell behind its schedule")
    return found
