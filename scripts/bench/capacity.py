"""Checkout capacity with the gateway's rate limits off: the closed-loop maximum, where each
checkout's CPU goes (per mesh process), then the latency at a third of that rate, open loop.

The gateway's local rate limit (a burst of 200, then 100/s, mesh.yaml) would cap checkouts far
below what the mesh can do; the part switches it off at runtime for its duration
(`ingress.rate_limit.enabled` = 0, restored after), as the overload part does.
"""

from __future__ import annotations

from dataclasses import dataclass

from scripts.account import Shopper
from scripts.bench.checkout import Checkout, bench_checkout
from scripts.bench.machine_load import cpu_used
from scripts.bench.open_loop import Run, generator
from scripts.bench.overload import rate_limits_off
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import GATEWAY

LATENCY_SHARE = 1 / 3
"""The checkout latency target holds at this share of the measured capacity."""
LATENCY_SECONDS = 10.0


@dataclass(frozen=True)
class Capacity:
    closed: Checkout
    cpu_ms: dict[str, float]
    """CPU milliseconds per checkout of every mesh process during the closed-loop run."""
    paced: Run
    rate_limit: list[str]
    """The rate limit's runtime value during the part, and after it was restored."""

    @property
    def rate(self) -> float:
        return self.closed.confirmed_rate


async def bench_capacity(
    mesh: RunningMesh, shopper: Shopper, orders: int, workers: int
) -> Capacity:
    gateway = mesh.gateway_address
    processes = {p.name: p.pid for p in mesh.processes() if p.pid is not None}
    async with rate_limits_off(mesh.admin(GATEWAY)) as rate_limit:
        with cpu_used(processes) as used:
            closed = await bench_checkout(gateway, shopper, orders, workers)
        # The warm-up orders (one per worker) ran inside the block too.
        done = closed.orders + closed.workers
        cpu_ms = {name: seconds * 1000 / done for name, seconds in used.items()}
        rate = closed.confirmed_rate
        print(
            f"checkouts at a third of {rate:.0f}/s, open loop ({LATENCY_SECONDS:.0f} s) ...",
            flush=True,
        )
        async with generator(mesh, shopper) as load:
            paced = await load.run(LATENCY_SHARE * rate, LATENCY_SECONDS)
    return Capacity(closed, cpu_ms, paced, rate_limit)
