"""Issue 11's targets, each with its measured figure and a verdict, as one table.

Every target is a ratio or an added latency measured within one run, so the machine's speed
(which varies about 2x between runs here) cancels out.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table

from scripts.bench.capacity import LATENCY_SHARE, Capacity
from scripts.bench.settings import CALLEE, CALLER
from scripts.bench.sidecar import FIXED_RATE, FixedRate, Memory, Pinned
from scripts.bench.unary import Unary

SIDECAR_CPU_PER_THOUSAND = 0.20
ADDED_P50_MS = 0.6
ADDED_P99_MS = 1.5
PINNED_RATIO = 0.90
ANONYMOUS_FACTOR = 1.5
CHECKOUT_RATIO = 0.08
CHECKOUT_P99_MS = 60.0
BENCH_SECONDS = 300.0


@dataclass(frozen=True)
class Target:
    name: str
    target: str
    figure: str
    met: bool | None
    """None: not measured on this machine (e.g. pinning needs two CPUs), or the rounds
    disagree (see `agreed`)."""

    @property
    def verdict(self) -> str:
        return {True: "MET", False: "NOT MET", None: "n/a"}[self.met]


def agreed(values: list[float], bound: float) -> bool | None:
    """Whether every round is within `bound` (True), every round beyond it (False), or None
    when the rounds fall on both sides: then the run's noise is larger than what the target
    measures (an added latency below zero is the direct path's own spread), and the median
    alone would give a verdict the rounds do not support."""
    if max(values) <= bound:
        return True
    if min(values) > bound:
        return False
    return None


def targets(
    unary: Unary,
    fixed: FixedRate,
    pinned: Pinned | None,
    memory: Memory,
    capacity: Capacity,
    seconds: float,
) -> list[Target]:
    cpu = {pod: fixed.cpu(pod) for pod in (CALLER, CALLEE)}
    worst_pod, worst = memory.worst_sidecar()
    anonymous = worst.anonymous_kib / memory.bare.anonymous_kib
    checkout = capacity.rate / unary.direct_max.rate
    p99 = capacity.paced.admitted_p99()

    return [
        Target(
            "1. sidecar CPU per 1,000 requests, each Envoy on the path",
            f"<= {SIDECAR_CPU_PER_THOUSAND:.2f} CPU-s",
            ", ".join(f"{pod} {value:.3f} ({fixed.cpu_spread(pod)})" for pod, value in cpu.items())
            + f" at {FIXED_RATE:.0f} req/s (a bare Envoy here: {fixed.bare_cpu:.3f})",
            max(cpu.values()) <= SIDECAR_CPU_PER_THOUSAND,
        ),
        Target(
            f"2. added latency at {FIXED_RATE:.0f} req/s, p50",
            f"<= +{ADDED_P50_MS} ms",
            f"{fixed.added_ms(0.5):+.2f} ms ({fixed.added_spread(0.5)}; one bare Envoy hop: "
            f"{fixed.bare_added_ms(0.5):+.2f})",
            agreed([r.added_ms(0.5) for r in fixed.rounds], ADDED_P50_MS),
        ),
        Target(
            f"2. added latency at {FIXED_RATE:.0f} req/s, p99",
            f"<= +{ADDED_P99_MS} ms",
            f"{fixed.added_ms(0.99):+.2f} ms ({fixed.added_spread(0.99)}; one bare Envoy hop: "
            f"{fixed.bare_added_ms(0.99):+.2f})",
            agreed([r.added_ms(0.99) for r in fixed.rounds], ADDED_P99_MS),
        ),
        Target(
            "3. mesh / direct max throughput, app pinned apart",
            f">= {PINNED_RATIO:.2f}",
            (f"{pinned.ratio:.2f}" if pinned else "needs 2 CPUs")
            + f" (unpinned {unary.ratio:.2f})",
            pinned.ratio >= PINNED_RATIO if pinned else None,
        ),
        Target(
            "4. sidecar anonymous memory / a bare Envoy's",
            f"<= {ANONYMOUS_FACTOR}x",
            f"{anonymous:.2f}x ({worst_pod}: {worst.anonymous_kib / 1024:.1f} MiB vs "
            f"{memory.bare.anonymous_kib / 1024:.1f} MiB)",
            anonymous <= ANONYMOUS_FACTOR,
        ),
        Target(
            "5. checkout throughput / direct GetUser max",
            f">= {CHECKOUT_RATIO}",
            f"{checkout:.3f} ({capacity.rate:.1f} / {unary.direct_max.rate:.0f} per s)",
            checkout >= CHECKOUT_RATIO,
        ),
        Target(
            f"5. checkout p99 at {LATENCY_SHARE:.0%} of its capacity",
            f"<= {CHECKOUT_P99_MS:.0f} ms",
            f"{p99:.1f} ms at {capacity.paced.rate:.1f}/s",
            p99 <= CHECKOUT_P99_MS,
        ),
        Target(
            "6. make bench's own time",
            f"<= {BENCH_SECONDS / 60:.0f} min",
            f"{seconds:.0f} s",
            seconds <= BENCH_SECONDS,
        ),
    ]


def render_targets(found: list[Target], console: Console) -> None:
    console.print("[bold]Targets (issue 11), medians of the rounds with their spread[/bold]")
    table = Table(box=box.SIMPLE)
    for column in ("target", "bound", "measured", "verdict"):
        table.add_column(column, justify="right" if column == "verdict" else "left")
    for target in found:
        style = {True: "green", False: "red", None: "yellow"}[target.met]
        table.add_row(
            target.name, target.target, target.figure, f"[{style}]{target.verdict}[/{style}]"
        )
    console.print(table)
