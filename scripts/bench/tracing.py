"""What tracing costs: the same checkouts through a mesh tracing none, the default share and
every call from outside, each mesh started afresh; throughput, latency and the CPU time every
process of the mesh (the collector included) spent per checkout, as ratios against the mesh
that traces nothing."""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from scripts.account import sign_up
from scripts.bench.checkout import Checkout, bench_checkout
from scripts.bench.settings import DESCRIPTOR, MESH_FILE
from shopmesh.local.mesh import COLLECTOR, RunningMesh
from shopmesh.local.observability import DEFAULT_SAMPLING
from shopmesh.local.startup import MeshOptions, up
from shopmesh.observe.traces import TraceReader

StopMesh = Callable[[RunningMesh], Awaitable[None]]
"""How the benchmark stops a mesh (surely, even when cancelled)."""
CLOCK_TICKS = 100
"""Linux's USER_HZ: /proc/<pid>/stat counts CPU time in these."""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used."""
    # The command name (2nd field) is parenthesised and may hold spaces: split after it.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def mesh_cpu(mesh: RunningMesh) -> tuple[float, float]:
    """CPU seconds used so far by every process of the mesh, and by its collector alone."""
    total = collector = 0.0
    for process in mesh.processes():
        if process.pid is None or not process.alive():
            continue
        used = cpu_seconds(process.pid)
        total += used
        if process.kind == COLLECTOR:
            collector += used
    return total, collector


@dataclass(frozen=True)
class TracedRun:
    sampling: float
    checkout: Checkout
    cpu_per_order_ms: float
    collector_per_order_ms: float
    traces_kept: int


async def traced_run(
    root: Path, sampling: float, orders: int, workers: int, stop: StopMesh
) -> TracedRun:
    state = root / f"tracing-{sampling:g}"
    mesh = await up(
        MeshOptions(
            state_dir=state,
            topology=MESH_FILE,
            descriptor=DESCRIPTOR,
            sampling=sampling,
            dashboard=False,
        )
    )
    try:
        shopper = await sign_up(mesh.gateway_address, "tracing")
        before, collector_before = mesh_cpu(mesh)
        checkout = await bench_checkout(mesh.gateway_address, shopper, orders, workers)
        after, collector_after = mesh_cpu(mesh)
    finally:
        await stop(mesh)
    return TracedRun(
        sampling=sampling,
        checkout=checkout,
        cpu_per_order_ms=(after - before) * 1000 / orders,
        collector_per_order_ms=(collector_after - collector_before) * 1000 / orders,
        traces_kept=TraceReader(mesh.paths.traces).count(),
    )


SAMPLINGS = (0.0, 0.1, DEFAULT_SAMPLING, 1.0)
"""Off (the baseline), a production-like 10 %, the local default, every call."""
ROUNDS = 3
"""Each rate is measured this many times, the rates in a rotated order each round, so that a
drift of the machine during the run does not fall on one rate; the report gives medians."""


async def bench_tracing(root: Path, orders: int, workers: int, stop: StopMesh) -> list[TracedRun]:
    """A fresh mesh per sampling rate of SAMPLINGS and round, the same checkouts through
    each."""
    rates = sorted(set(SAMPLINGS))
    runs = []
    for round_number in range(ROUNDS):
        order = rates[round_number % len(rates) :] + rates[: round_number % len(rates)]
        for rate in order:
            runs.append(await traced_run(root / f"r{round_number}", rate, orders, workers, stop))
    return runs


@dataclass(frozen=True)
class RateFigures:
    """The medians of one sampling rate's rounds."""

    sampling: float
    orders_per_second: float
    rates: tuple[float, ...]
    p50: float
    p99: float
    cpu_per_order_ms: float
    collector_per_order_ms: float
    traces_kept: int

    @classmethod
    def of(cls, runs: Sequence[TracedRun]) -> RateFigures:
        rates = tuple(sorted(run.checkout.orders / run.checkout.seconds for run in runs))
        return cls(
            sampling=runs[0].sampling,
            orders_per_second=statistics.median(rates),
            rates=rates,
            p50=statistics.median(run.checkout.percentile(0.5) for run in runs),
            p99=statistics.median(run.checkout.percentile(0.99) for run in runs),
            cpu_per_order_ms=statistics.median(run.cpu_per_order_ms for run in runs),
            collector_per_order_ms=statistics.median(run.collector_per_order_ms for run in runs),
            traces_kept=int(statistics.median(run.traces_kept for run in runs)),
        )


def render_tracing(runs: Sequence[TracedRun], console: Console) -> None:
    by_rate: dict[float, list[TracedRun]] = {}
    for run in runs:
        by_rate.setdefault(run.sampling, []).append(run)
    figures = [RateFigures.of(by_rate[rate]) for rate in sorted(by_rate)]
    off, first = figures[0], runs[0]
    console.print(
        f"[bold]What tracing costs[/bold]: {first.checkout.orders} checkouts through the "
        f"gateway from {first.checkout.workers} workers, a fresh mesh per sampling rate and "
        f"round, medians of {len(by_rate[off.sampling])} rounds (default {DEFAULT_SAMPLING:.0%})"
    )
    table = Table(box=box.SIMPLE)
    columns = ("sampling", "orders/s", "rounds", "p50", "p99", "mesh CPU/order", "collector")
    for column in (*columns, "traces kept"):
        table.add_column(column, justify="right")

    def against_off(value: float, base: float, unit: str) -> str:
        return f"{value:.1f}{unit} ({value / base:.2f}x)"

    for rate in figures:
        table.add_row(
            f"{rate.sampling:.0%}",
            against_off(rate.orders_per_second, off.orders_per_second, ""),
            "-".join(f"{value:.0f}" for value in (rate.rates[0], rate.rates[-1])),
            against_off(rate.p50, off.p50, " ms"),
            against_off(rate.p99, off.p99, " ms"),
            against_off(rate.cpu_per_order_ms, off.cpu_per_order_ms, " ms"),
            f"{rate.collector_per_order_ms:.2f} ms",
            str(rate.traces_kept),
        )
    console.print(table)
