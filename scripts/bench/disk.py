"""Reads while the disk is busy (issue 8, finding 4: the apps froze while the disk flushed):
GetOrder, GetUser and GetProduct through the gateway, each at READ_RATE calls a second (open
loop), for one phase each:

1. idle;
2. while another process saturates the disk of the mesh's data directory with fsyncs
   (scripts.bench.fsync_load, in the same filesystem, bounded in time and size, removed after);
3. while checkouts write (PlaceOrder at CHECKOUT_RATE: the services' own fsyncs);
4. both at once: the services' writes wait for the saturated disk, and no read may wait for
   them (what froze the apps before their stores ran off the event loop).

Verdict: every read's p99 under P99_BOUND_MS in every phase, and its ratio to idle. Reads and
checkouts together stay under the gateway's rate limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from grpc import aio
from rich import box
from rich.console import Console
from rich.table import Table

from scripts.account import Shopper, sign_up
from scripts.bench.checkout import CHECKOUT_SKU, PAYMENT_TOKEN
from scripts.bench.h2load import BenchError
from scripts.bench.settings import CALL_TIMEOUT, DESCRIPTOR, MESH_FILE, ROOT
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, up

READ_RATE = 25.0
"""Calls a second of each read method: 75/s of reads, plus checkouts, under the rate limit."""
CHECKOUT_RATE = 15.0
P99_BOUND_MS = 50.0
WARM_UP_CALLS = 20
FSYNC_START_WITHIN = 10.0

Call = Callable[[], Awaitable[Any]]
StopMesh = Callable[[RunningMesh], Awaitable[None]]


@dataclass(frozen=True)
class Phase:
    name: str
    latencies_ms: dict[str, list[float]]
    """Method -> every OK call's latency, sorted."""
    failures: Counter[str]
    detail: str = ""
    load: float = 0.0
    """The machine's 1-minute load average at the end: other work skews every figure."""


@dataclass(frozen=True)
class DiskFigures:
    filesystem: str
    seconds: float
    phases: list[Phase] = field(default_factory=list)


def percentile(values: list[float], share: float) -> float:
    return values[max(1, math.ceil(share * len(values))) - 1] if values else math.nan


def filesystem_of(path: Path) -> str:
    """`ext4 /dev/vda at /`: the mount that holds `path` (from /proc/mounts)."""
    resolved = str(path.resolve())
    best = ("?", "?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[2]):
            best = (kind, device, mount)
    return f"{best[0]} {best[1]} at {best[2]}"


async def paced(call: Call, rate: float, seconds: float, outcomes: Counter[str]) -> list[float]:
    """`call` every 1/rate s for `seconds` whatever the answers take (open loop); the OK
    calls' latencies in ms, sorted. Failures are counted in `outcomes` by code."""
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            await call()
        except aio.AioRpcError as error:
            outcomes[error.code().name] += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for index in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            group.create_task(one())
    return sorted(latencies)


async def read_phase(name: str, reads: dict[str, Call], seconds: float, detail: str = "") -> Phase:
    failures: Counter[str] = Counter()
    measured = await asyncio.gather(
        *(paced(call, READ_RATE, seconds, failures) for call in reads.values())
    )
    load = os.getloadavg()[0]
    return Phase(name, dict(zip(reads, measured, strict=True)), failures, detail, load)


@contextlib.asynccontextmanager
async def fsync_load(directory: Path, seconds: float) -> AsyncIterator[list[str]]:
    """Another process writing and fsyncing a file in `directory` for `seconds`; yields once
    it writes, and the list its report is appended to after the block."""
    target = directory / "fsync-load.bin"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench.fsync_load",
        str(target),
        str(seconds),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    report: list[str] = []
    try:
        deadline = time.monotonic() + FSYNC_START_WITHIN
        while not target.exists():
            if process.returncode is not None or time.monotonic() > deadline:
                raise BenchError("the fsync load did not start writing")
            await asyncio.sleep(0.05)
        yield report
        output, _ = await asyncio.wait_for(process.communicate(), seconds + 10)
        done = json.loads(output)
        report.append(
            f"{done['fsyncs'] / done['seconds']:.0f} fsyncs/s, "
            f"{done['mib'] / done['seconds']:.0f} MiB/s written"
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        target.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def checkouts(
    stub: orders_pb2_grpc.OrdersServiceAsyncStub, shopper: Shopper
) -> AsyncIterator[Counter[str]]:
    """PlaceOrder at CHECKOUT_RATE (open loop) for the block; counts the outcomes."""
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def one() -> None:
        try:
            order = await place_order(stub, shopper)
        except aio.AioRpcError as error:
            outcomes[error.code().name] += 1
            return
        outcomes[orders_pb2.OrderStatus.Name(order.status)] += 1

    async def pace() -> None:
        async with asyncio.TaskGroup() as group:
            while not stop.is_set():
                group.create_task(one())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1 / CHECKOUT_RATE)

    pacer = asyncio.create_task(pace())
    try:
        yield outcomes
    finally:
        stop.set()
        await pacer


async def place_order(
    stub: orders_pb2_grpc.OrdersServiceAsyncStub, shopper: Shopper
) -> orders_pb2.Order:
    response = await stub.PlaceOrder(
        orders_pb2.PlaceOrderRequest(
            idempotency_key=f"disk-{uuid.uuid4().hex}",
            user_id=shopper.user_id,
            items=[orders_pb2.OrderItem(sku=CHECKOUT_SKU, quantity=1)],
            payment_token=PAYMENT_TOKEN,
        ),
        timeout=CALL_TIMEOUT,
        metadata=shopper.metadata,
    )
    return response.order


def placed_detail(placed: Counter[str]) -> str:
    outcomes = ", ".join(f"{outcome} {n}" for outcome, n in placed.most_common())
    return f"{placed.total()} checkouts at {CHECKOUT_RATE:g}/s: {outcomes}"


async def bench_disk(root: Path, seconds: float, stop: StopMesh) -> DiskFigures:
    print("starting the mesh (shopmesh.local) ...", flush=True)
    options = MeshOptions(
        state_dir=root / "mesh", topology=MESH_FILE, descriptor=DESCRIPTOR, dashboard=False
    )
    mesh = await up(options)
    try:
        gateway = mesh.gateway_address
        shopper = await sign_up(gateway, "disk")
        async with aio.insecure_channel(gateway) as channel:
            orders = orders_pb2_grpc.OrdersServiceStub(channel)
            order = await place_order(orders, shopper)
            users = users_pb2_grpc.UsersServiceStub(channel)
            inventory = inventory_pb2_grpc.InventoryServiceStub(channel)
            reads: dict[str, Call] = {
                "GetOrder": lambda: orders.GetOrder(
                    orders_pb2.GetOrderRequest(order_id=order.order_id),
                    timeout=CALL_TIMEOUT,
                    metadata=shopper.metadata,
                ),
                "GetUser": lambda: users.GetUser(
                    users_pb2.GetUserRequest(user_id=shopper.user_id),
                    timeout=CALL_TIMEOUT,
                    metadata=shopper.metadata,
                ),
                "GetProduct": lambda: inventory.GetProduct(
                    inventory_pb2.GetProductRequest(sku=CHECKOUT_SKU), timeout=CALL_TIMEOUT
                ),
            }
            for call in reads.values():
                for _ in range(WARM_UP_CALLS):
                    await call()
            figures = DiskFigures(filesystem_of(mesh.paths.data), seconds)
            print(f"reads idle ({seconds:.0f} s) ...", flush=True)
            figures.phases.append(await read_phase("idle", reads, seconds))
            print("reads while another process fsyncs ...", flush=True)
            async with fsync_load(mesh.paths.data, seconds + 1) as report:
                phase = await read_phase("disk saturated by fsyncs", reads, seconds)
            figures.phases.append(replace(phase, detail=report[0]))
            print("reads while checkouts write ...", flush=True)
            async with checkouts(orders, shopper) as placed:
                phase = await read_phase("checkouts writing", reads, seconds)
            figures.phases.append(replace(phase, detail=placed_detail(placed)))
            # The case of finding 4: the services' own writes wait for a saturated disk, and
            # no read may wait for them.
            print("reads while checkouts write and another process fsyncs ...", flush=True)
            async with (
                fsync_load(mesh.paths.data, seconds + 1) as report,
                checkouts(orders, shopper) as placed,
            ):
                phase = await read_phase("both", reads, seconds)
            figures.phases.append(replace(phase, detail=f"{report[0]}; {placed_detail(placed)}"))
    finally:
        await stop(mesh)
    return figures


def render_disk(figures: DiskFigures, console: Console) -> list[str]:
    """The table; returns the reads over the bound ("phase method p99")."""
    console.print(
        f"[bold]Reads while the disk is busy[/bold]: GetOrder, GetUser, GetProduct through the "
        f"gateway, {READ_RATE:g} calls/s each, {figures.seconds:.0f} s a phase; data on "
        f"{figures.filesystem}"
    )
    table = Table(box=box.SIMPLE)
    for column in ("phase", "read", "calls", "p50", "p99", "p99 vs idle", "verdict", "failed"):
        table.add_column(column, justify="left" if column in ("phase", "read") else "right")
    idle = figures.phases[0]
    over: list[str] = []
    for phase in figures.phases:
        for method, latencies in phase.latencies_ms.items():
            p99 = percentile(latencies, 0.99)
            base = percentile(idle.latencies_ms[method], 0.99)
            ok = p99 < P99_BOUND_MS
            if not ok:
                over.append(f"{phase.name} {method} p99 {p99:.1f} ms")
            table.add_row(
                phase.name,
                method,
                str(len(latencies)),
                f"{percentile(latencies, 0.5):.1f} ms",
                f"{p99:.1f} ms",
                f"{p99 / base:.2f}x",
                f"< {P99_BOUND_MS:g} ms" if ok else f"[red]>= {P99_BOUND_MS:g} ms[/red]",
                str(phase.failures.total()),
            )
        table.add_section()
    console.print(table)
    for phase in figures.phases:
        if phase.detail:
            console.print(f"{phase.name}: {phase.detail}")
    loads = ", ".join(f"{phase.name} {phase.load:.2f}" for phase in figures.phases)
    console.print(f"load average (1 min) after each phase: {loads} on {os.cpu_count()} CPUs")
    return over
