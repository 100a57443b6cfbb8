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

from scripts.bench.checkout import Checkout
from scripts.bench.h2load import LATENCY_LOAD, ROUNDS, WARM_UP_REQUESTS, Shape, run_tool
from scripts.bench.unary import MeshLogs, Unary
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import GATEWAY

if TYPE_CHECKING:
    from scripts.bench.overload import Overload
    from scripts.bench.relay import RelayLag

FOREIGN_CPU_LIMIT = 0.05
"""Above this share of CPU time used by other processes during the run, it warns."""


# --- machine, memory, report ----------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


def envoy_memory(mesh: RunningMesh) -> dict[str, tuple[int, int]]:
    pids = {name: pod.sidecar.pid if pod.sidecar else None for name, pod in mesh.pods.items()}
    pids[GATEWAY] = mesh.gateway.pid
    return {name: memory_kib(pid) for name, pid in pids.items() if pid is not None}


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
    logs: MeshLogs
    retries: int
    overflows: int
    checkout: Checkout
    memory: dict[str, tuple[int, int]]
    seconds: float
    foreign_cpu: float
    """Share of the machine's CPU time that processes outside the benchmark used during it."""
    relay: RelayLag
    overload: Overload


def signed_ms(value: float) -> str:
    return f"{value:+.2f} ms"


def two_columns(rows: Sequence[tuple[str, str]], right: bool = False) -> Table:
    table = Table(box=box.SIMPLE, show_header=False)
    table.add_column()
    table.add_column(justify="right" if right else "left")
    for row in rows:
        table.add_row(*row)
    return table


def render(figures: Figures, console: Console) -> None:
    """Print every figure as tables."""
    unary, checkout = figures.unary, figures.checkout
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

    d, m = unary.direct_at_rate, unary.mesh_at_rate
    assert unary.paced.rate is not None
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
        f"ratio {unary.mesh_max.rate / unary.direct_max.rate:.2f}",
    )
    table.add_row("  rounds ranged", unary.direct_max.spread(), unary.mesh_max.spread(), "")
    for name, share in (("p50", 0.5), ("p99", 0.99)):
        table.add_row(
            f"{name} at {unary.paced.rate:.0f} req/s ({LATENCY_LOAD:.0%})",
            ms(d.percentile(share)),
            ms(m.percentile(share)),
            signed_ms(m.percentile(share) - d.percentile(share)),
        )
    table.add_row(
        "calls sent / failed",
        "{} / {}".format(*unary.direct_calls),
        "{} / {}".format(*unary.mesh_calls),
        "",
    )
    console.print(table)

    def statuses(counts: Counter[str]) -> str:
        return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())) or "none"

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
                    f"latency at {LATENCY_LOAD:.0%} of direct max",
                    f"{unary.paced.describe()}; {d.requests} calls per path",
                ),
                (
                    "OK calls (h2load: HTTP 2xx)",
                    f"every OK answer is the same {unary.frame_size}-byte GetUserResponse "
                    "frame, an error has none: h2load's DATA bytes count them (throughput "
                    "counts only OK calls)",
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

    console.print(
        "[bold]Checkout: PlaceOrder through the gateway[/bold] "
        "(saga: user, price, reserve, charge, commit)"
    )
    console.print(
        two_columns(
            [
                ("orders (concurrent workers)", f"{checkout.orders} ({checkout.workers})"),
                ("throughput", f"{checkout.orders / checkout.seconds:.1f} orders/s"),
                ("p50", ms(checkout.percentile(0.5))),
                ("p99", ms(checkout.percentile(0.99))),
                ("outcomes", ", ".join(f"{k}: {v}" for k, v in checkout.outcomes.most_common())),
            ],
            right=True,
        )
    )

    console.print("[bold]Envoy memory after the run[/bold]")
    memory = Table(box=box.SIMPLE)
    memory.add_column("envoy")
    memory.add_column("VmRSS", justify="right")
    memory.add_column("peak (VmHWM)", justify="right")
    for name, (rss, peak) in figures.memory.items():
        memory.add_row(name, f"{rss / 1024:.1f} MiB", f"{peak / 1024:.1f} MiB")
    console.print(memory)


def problems(figures: Figures) -> list[str]:
    """What makes the figures less than clean: failed calls, or logs that disagree."""
    unary, logs, checkout = figures.unary, figures.logs, figures.checkout
    found = []
    # Not the load average: it trails the last minute, which may hold an earlier run.
    if figures.foreign_cpu > FOREIGN_CPU_LIMIT:
        found.append(
            f"the machine was busy: other processes used {figures.foreign_cpu:.0%} of the CPU "
            "time during the run, which skews every figure"
        )
    for path, (calls, failed) in (("direct", unary.direct_calls), ("mesh", unary.mesh_calls)):
        if failed:
            found.append(
                f"{failed} of {calls} GetUser calls ({path}) failed; the latencies include them"
            )
    logged_failures = logs.caller.total() - logs.caller["0"]
    if (logs.caller.total(), logged_failures) != unary.mesh_calls:
        found.append(
            f"orders' egress logged {logs.caller.total()} h2load calls, {logged_failures} "
            f"failed; h2load counted {unary.mesh_calls[0]}, {unary.mesh_calls[1]} failed"
        )
    if checkout.outcomes["ORDER_STATUS_CONFIRMED"] != checkout.orders:
        found.append(f"not every order was confirmed: {dict(checkout.outcomes)}")
    return found
