"""`python -m scripts.bench`: start the mesh, run every benchmark, stop it, print the report."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

import scripts.bench
from scripts.account import sign_up
from scripts.bench.capacity import bench_capacity
from scripts.bench.disk import DiskFigures, bench_disk, render_disk
from scripts.bench.h2load import ROUNDS, BenchError
from scripts.bench.overload import Overload, bench_overload, rate_limits_off, seed_stock
from scripts.bench.overload_report import render_overload
from scripts.bench.relay import (
    RelayRun,
    bench_relay,
    bench_relay_only,
    relay_problems,
    render_relay,
)
from scripts.bench.report import Figures, machine, problems, render, tools
from scripts.bench.settings import CALLEE, CALLER, DESCRIPTOR, MESH_FILE
from scripts.bench.sidecar import (
    FIXED_RATE,
    Cores,
    bare_envoy,
    bench_fixed_rate,
    bench_memory,
    bench_pinned,
)
from scripts.bench.targets import render_targets, targets
from scripts.bench.tracing import TracedRun, bench_tracing, render_tracing
from scripts.bench.unary import bench_unary, mesh_logs, prepare_h2load
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, find_envoy, up
from shopmesh.topology import GATEWAY

BENCH_LOG_BYTES = 512 * 1024 * 1024
"""Tens of thousands of calls make tens of MiB of access log, above the usual cap."""

# --- main -----------------------------------------------------------------------------------


async def stop_surely(mesh: RunningMesh) -> None:
    """Stop the mesh even when this task is cancelled meanwhile (Ctrl-C or SIGTERM arriving
    while a run ends), then pass the cancellation on."""
    stopping = asyncio.ensure_future(mesh.stop())
    cancelled = False
    while not stopping.done():
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            cancelled = True
    stopping.result()
    if cancelled:
        raise asyncio.CancelledError


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU seconds of the whole machine and of this process with its children (the mesh
    and h2load are children: once reaped, their CPU time counts in os.times())."""

    machine: float
    ours: float

    @classmethod
    def now(cls) -> CpuSample:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        # user nice system idle iowait irq softirq steal: everything but idle and iowait.
        busy = sum(fields[:8]) - fields[3] - fields[4]
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        return cls(busy / os.sysconf("SC_CLK_TCK"), ours)


def foreign_share(before: CpuSample, after: CpuSample, wall: float) -> float:
    """The share of all CPUs' time that other processes used between two samples."""
    other = (after.machine - before.machine) - (after.ours - before.ours)
    return max(0.0, other) / (wall * len(os.sched_getaffinity(0)))


async def start_mesh(root: Path) -> RunningMesh:
    """The mesh in `root`/mesh, with the stock the overload part needs."""
    print("starting the mesh (shopmesh.local) ...", flush=True)
    await seed_stock(root / "mesh")
    options = MeshOptions(
        state_dir=root / "mesh",
        topology=MESH_FILE,
        descriptor=DESCRIPTOR,
        dashboard=False,
        # The cross-checks count every call in the access logs: none may be capped away.
        log_max_bytes=BENCH_LOG_BYTES,
    )
    return await up(options)


async def bench(args: argparse.Namespace, root: Path) -> Figures:
    if shutil.which("h2load") is None:
        raise BenchError("h2load not found: `make bench` installs it (Debian nghttp2-client)")
    about = machine()
    cpu_before, started = CpuSample.now(), time.monotonic()
    mesh = await start_mesh(root)
    try:
        if "GetUser" not in mesh.topology.services["orders"].calls.get("users", ()):
            raise BenchError(f"{MESH_FILE} no longer lets orders call users.GetUser")
        envoy = find_envoy()
        about += await tools(envoy)
        # Its access token lives 15 minutes, far beyond the parts that use it (a few minutes);
        # h2load reads the user straight from users' sockets, without it.
        shopper = await sign_up(mesh.gateway_address, "bench")
        h2load = await prepare_h2load(mesh, shopper.user_id, root)
        rounds = 2 * ROUNDS * args.seconds
        print(f"h2load: GetUser direct and through two sidecars, flat out (~{rounds:.0f} s) ...")
        unary = await bench_unary(mesh, h2load, args.seconds)
        async with bare_envoy(mesh, h2load, envoy, root) as bare:
            print(
                f"h2load: direct, both sidecars and a bare Envoy at {FIXED_RATE:.0f} req/s, "
                f"Envoy CPU (~{3 * ROUNDS * args.seconds:.0f} s) ...",
                flush=True,
            )
            fixed = await bench_fixed_rate(mesh, h2load, bare, args.seconds)
            cores = Cores.of_this_machine()
            pinned = None
            if cores is not None:
                print(f"h2load: flat out, the app alone on CPU {cores.app} (~{rounds:.0f} s) ...")
                pinned = await bench_pinned(mesh, h2load, cores, args.seconds)
            print("Envoy memory, next to the bare Envoy ...", flush=True)
            memory = bench_memory(mesh, bare)
        print(f"{args.orders} checkouts through the gateway, rate limits off ...", flush=True)
        capacity = await bench_capacity(mesh, shopper, args.orders, args.workers)
        print(f"outbox relay lag at {capacity.rate:.0f} checkouts/s (~10 s) ...", flush=True)
        async with rate_limits_off(mesh.admin(GATEWAY)):
            relay = await bench_relay(mesh, shopper, capacity.rate)
        stats = await mesh.admin(CALLER).stats()
        logs = await mesh_logs(mesh, *h2load.calls(mesh.pod(CALLER).egress_socket))
    finally:
        await stop_surely(mesh)
    foreign = foreign_share(cpu_before, CpuSample.now(), time.monotonic() - started)
    return Figures(
        about=about,
        startup=mesh.state.up_seconds or 0.0,
        pods=len(mesh.pods),
        unary=unary,
        fixed=fixed,
        pinned=pinned,
        memory=memory,
        capacity=capacity,
        logs=logs,
        frame_size=h2load.frame_size,
        direct_calls=h2load.calls(mesh.pod(CALLEE).app_socket),
        mesh_calls=h2load.calls(mesh.pod(CALLER).egress_socket),
        retries=stats.get("cluster.svc_users.upstream_rq_retry", 0),
        # Envoy 1.40 counts requests refused by max_requests as active (not pending) overflows.
        overflows=stats.get("cluster.svc_users.upstream_rq_active_overflow", 0)
        + stats.get("cluster.svc_users.upstream_rq_pending_overflow", 0),
        seconds=args.seconds,
        foreign_cpu=foreign,
        relay=relay,
    )


async def overload_only(root: Path) -> Overload:
    """`--overload`: a fresh mesh and only the overload part."""
    mesh = await start_mesh(root)
    try:
        return await bench_overload(mesh)
    finally:
        await stop_surely(mesh)


async def _main(
    args: argparse.Namespace, root: Path
) -> Figures | list[TracedRun] | RelayRun | DiskFigures | Overload:
    # SIGTERM cancels like Ctrl-C does, so the mesh is stopped on the way out.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.tracing:
        print("tracing off, at the default rate and at 100 %: a mesh each ...", flush=True)
        return await bench_tracing(root, args.orders, args.workers, stop_surely)
    if args.relay:
        print("checkout capacity, then the outbox relay's lag at it ...", flush=True)
        return await bench_relay_only(root, args.orders, args.workers, stop_surely)
    if args.disk:
        print("reads idle, with the disk saturated by fsyncs, with checkouts ...", flush=True)
        return await bench_disk(root, args.seconds, stop_surely)
    if args.overload:
        print("checkout capacity, then 5x it with the rate limits off ...", flush=True)
        return await overload_only(root)
    return await bench(args, root)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench", description=(scripts.bench.__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each h2load run")
    parser.add_argument(
        "--orders",
        type=int,
        default=200,
        help="checkouts to place (the gateway's rate limit in mesh.yaml, a burst of 200 then "
        "100/s, answers RESOURCE_EXHAUSTED beyond)",
    )
    parser.add_argument("--workers", type=int, default=8, help="concurrent checkout callers")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="instead: what tracing costs, checkouts with tracing off, at the default rate "
        "and at 100 %%",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="instead: only the checkout capacity and the outbox relay's lag at it (~30 s)",
    )
    parser.add_argument(
        "--disk",
        action="store_true",
        help="instead: read RPCs' p50/p99 idle, with another process saturating the disk with "
        "fsyncs, and with checkouts writing (--seconds a phase)",
    )
    parser.add_argument(
        "--overload",
        action="store_true",
        help="instead: the checkout capacity measured open loop, then PlaceOrder at 5x it with "
        "the gateway's rate limits off: admitted p99, refusals, consistency (~60 s)",
    )
    args = parser.parse_args()
    # Short: Unix socket paths must stay under ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="smbench-", dir="/tmp"))
    started = time.monotonic()
    status = 1
    try:
        figures = asyncio.run(_main(args, root))
        # Wide enough for the tables when the output is a file or a pipe, not a terminal.
        console = Console(width=None if sys.stdout.isatty() else 120, highlight=False)
        if isinstance(figures, Figures):
            render(figures, console)
            render_relay(figures.relay, console)
            found = targets(
                figures.unary,
                figures.fixed,
                figures.pinned,
                figures.memory,
                figures.capacity,
                time.monotonic() - started,
            )
            render_targets(found, console)
            for problem in problems(figures) + relay_problems(figures.relay):
                console.print(f"WARNING: {problem}")
        elif isinstance(figures, RelayRun):
            console.print(
                f"checkout capacity: {figures.checkout.orders / figures.checkout.seconds:.1f} "
                f"orders/s ({figures.checkout.orders} orders, {figures.checkout.workers} workers)"
            )
            render_relay(figures.lag, console)
            for problem in relay_problems(figures.lag):
                console.print(f"WARNING: {problem}")
        elif isinstance(figures, Overload):
            for failure in render_overload(figures, console):
                console.print(f"WARNING: {failure}")
        elif isinstance(figures, DiskFigures):
            for over in render_disk(figures, console):
                console.print(f"WARNING: {over}")
        else:
            render_tracing(figures, console)
        console.print(f"bench took {time.monotonic() - started:.0f} s")
        status = 0
    except (BenchError, MeshError) as error:
        print(f"bench failed: {error}", file=sys.stderr)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            "interrupted; the mesh was stopped (if a second Ctrl-C cut that short: "
            f"shopmesh down --state-dir {root / 'mesh'})",
            file=sys.stderr,
        )
    finally:
        if status or args.keep:
            print(f"logs, configs and h2load logs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
