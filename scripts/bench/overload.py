"""Overload (issue 8, finding 7: beyond its capacity the gateway admitted 64 checkouts at once, and
the admitted waited 25x as long). With the gateway's rate limits switched off for the part (both
runtime-keyed by `ingress.rate_limit.enabled`; restored after), PlaceOrder through the gateway
from the open-loop generator (scripts.bench.open_loop), one user for the part:

1. an estimate: the closed-loop checkout bench's throughput (8 workers);
2. low load: LOW_LOAD_SHARE of the estimate for LOW_LOAD_SECONDS; its admitted p99 is the
   baseline, and nothing may be refused in it (it spans a minRTT window of the controller);
3. capacity: open-loop steps of STEP_SECONDS at STEP_SHARES of the estimate, up to
   FAILED_STEPS in a row that fail; the capacity is the highest rate whose admitted p99 stays within
   CAPACITY_P99_FACTOR x the baseline with at least ADMITTED_SHARE of the calls admitted;
4. overload: OVERLOAD_FACTOR x the capacity for OVERLOAD_SECONDS.

Verdicts (the figure of the issue): the admitted p99 under overload within P99_FACTOR x the
baseline; every refusal RESOURCE_EXHAUSTED with an ErrorInfo reason, answered within
REFUSAL_BOUND_MS as the gateway's access log measures it (%DURATION%); no mesh process crashed
or restarted; afterwards, once no order is PENDING, every order the client saw admitted is
CONFIRMED, no other order exists but for calls that ended without an answer, and the stock sold
equals the orders confirmed. The adaptive concurrency controller's gauges are sampled meanwhile.

STICKER-01's stock is raised before the mesh starts (seed_stock): thousands of checkouts would
empty the seed catalog's 1000 units, and a refused-for-stock checkout is cheaper than a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from grpc import aio

from scripts.account import Shopper, sign_up
from scripts.bench.checkout import CHECKOUT_SKU, bench_checkout
from scripts.bench.h2load import BenchError
from scripts.bench.open_loop import Generator, Run, generator
from scripts.bench.settings import CALL_TIMEOUT
from scripts.fuzz.logs import LogMark
from services.inventory.catalog import seed_catalog
from services.inventory.store import SqlInventoryStore
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.envoy.admin import AdminClient, parse_stats
from shopmesh.envoy.edge import INGRESS, RATE_LIMIT_ENABLED
from shopmesh.layout import StateDir
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import GATEWAY

ESTIMATE_ORDERS = 120
ESTIMATE_WORKERS = 8
LOW_LOAD_SHARE = 0.10
LOW_LOAD_SECONDS = 40.0
"""Longer than the controller's min_rtt_interval (30 s, jitter 10 %) and one of its windows, so
the low-load run shows that the controller's re-measurement refuses nothing at low load."""
STEP_SHARES = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
"""Of the estimate: up to twice it, since refusals during the controller's first measurement of
its minimum latency (at min_concurrency) can make a closed-loop estimate low."""
STEP_SECONDS = 4.0
CAPACITY_P99_FACTOR = 3.0
FAILED_STEPS = 2
"""The steps stop after this many in a row beyond the bound."""
ADMITTED_SHARE = 0.99
OVERLOAD_FACTOR = 5.0
OVERLOAD_SECONDS = 10.0
P99_FACTOR = 2.0
REFUSAL_BOUND_MS = 10
STOCK = 200_000
SETTLE_DEADLINE = 30.0
LOG_DEADLINE = 5.0
SAMPLE_INTERVAL = 0.25
CONTROLLER = f"http.{INGRESS}.adaptive_concurrency.gradient_controller."
PLACE_ORDER = "/shop.orders.v1.OrdersService/PlaceOrder"
PENDING = orders_pb2.OrderStatus.Name(orders_pb2.ORDER_STATUS_PENDING)
CONFIRMED = orders_pb2.OrderStatus.Name(orders_pb2.ORDER_STATUS_CONFIRMED)


async def seed_stock(state_dir: Path, units: int = STOCK) -> None:
    """Before the mesh starts in `state_dir`: the inventory database with the seed catalog but
    `units` of CHECKOUT_SKU (inventory seeds its catalog only into an empty database)."""
    paths = StateDir(state_dir)
    await asyncio.to_thread(paths.data.mkdir, parents=True, exist_ok=True)
    store = await SqlInventoryStore.open(paths.database("inventory"))
    try:
        raised = [replace(p, on_hand=units) if p.sku == CHECKOUT_SKU else p for p in seed_catalog()]
        await store.seed(raised)
    finally:
        await store.close()


# --- what a step is, and the capacity -------------------------------------------------------


@dataclass(frozen=True)
class Step:
    run: Run
    bound_ms: float

    @property
    def passed(self) -> bool:
        run = self.run
        return run.admitted_share >= ADMITTED_SHARE and run.admitted_p99() <= self.bound_ms


def capacity_of(steps: list[Step]) -> float | None:
    """The highest rate of a step that passed, None when none did."""
    return max((step.run.rate for step in steps if step.passed), default=None)


# --- the gateway's access log and its controller ---------------------------------------------


@dataclass(frozen=True)
class Logged:
    """One call as the gateway's access log has it."""

    grpc_status: str
    duration_ms: int
    flags: str


def gateway_calls(lines: list[str], path: str) -> list[Logged]:
    """The calls to `path` on the gateway's public listener among access-log `lines` (JSON; a
    partial last line, still being written, is left out)."""
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("listener") == INGRESS and entry.get("path") == path:
            # grpc_status is a JSON number, or null when the call had none.
            status, flags = str(entry["grpc_status"]), str(entry["flags"])
            found.append(Logged(status, int(entry["duration_ms"]), flags))
    return found


async def logged_since(mark: LogMark, calls: int) -> list[Logged]:
    """The PlaceOrder calls logged since `mark` once there are `calls` of them (Envoy flushes
    its access log every 100 ms), or those there are after LOG_DEADLINE."""
    deadline = time.monotonic() + LOG_DEADLINE
    while True:
        found = gateway_calls(await asyncio.to_thread(mark.new_lines), PLACE_ORDER)
        if len(found) >= calls or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def controller_samples(admin: AdminClient) -> AsyncIterator[list[dict[str, int]]]:
    """The adaptive concurrency controller's stats (gauge and counter names without
    CONTROLLER), every SAMPLE_INTERVAL during the block."""
    samples: list[dict[str, int]] = []

    async def sample() -> None:
        while True:
            stats = parse_stats(await admin.get("/stats", {"filter": "adaptive_concurrency"}))
            samples.append({k.removeprefix(CONTROLLER): v for k, v in stats.items()})
            await asyncio.sleep(SAMPLE_INTERVAL)

    sampler = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


# --- afterwards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consistency:
    statuses: dict[str, str]
    """Order id -> status of every order of the part's user, once none is PENDING (or the
    settle deadline passed)."""
    admitted: set[str]
    """Orders the client saw placed."""
    unanswered: int
    """Calls that ended with neither an order nor a refusal (their order may exist)."""
    settle_seconds: float
    stock_sold: int
    """Units of CHECKOUT_SKU sold during the part, estimate included."""
    earlier: set[str] = field(default_factory=set)
    """Orders of the closed-loop estimate, placed before the open-loop runs."""

    @property
    def missing(self) -> set[str]:
        return self.admitted - self.statuses.keys()

    @property
    def unconfirmed(self) -> Counter[str]:
        found = (self.statuses[order] for order in self.admitted & self.statuses.keys())
        return Counter(status for status in found if status != CONFIRMED)

    @property
    def pending(self) -> int:
        return sum(status == PENDING for status in self.statuses.values())

    @property
    def unexplained(self) -> int:
        """Orders the client never saw placed, beyond those of unanswered calls: a refused
        call that made an order anyway."""
        others = self.statuses.keys() - self.admitted - self.earlier
        return max(0, len(others) - self.unanswered)

    @property
    def confirmed(self) -> int:
        return sum(status == CONFIRMED for status in self.statuses.values())

    @property
    def consistent(self) -> bool:
        stock_ok = self.stock_sold == self.confirmed
        empty = not (self.missing or self.unconfirmed or self.pending or self.unexplained)
        return empty and stock_ok


async def list_orders(channel: aio.Channel, shopper: Shopper) -> dict[str, str]:
    stub = orders_pb2_grpc.OrdersServiceStub(channel)
    statuses: dict[str, str] = {}
    token = ""
    while True:
        page = await stub.ListOrders(
            orders_pb2.ListOrdersRequest(user_id=shopper.user_id, page_size=500, page_token=token),
            timeout=CALL_TIMEOUT,
            metadata=shopper.metadata,
        )
        statuses.update({o.order_id: orders_pb2.OrderStatus.Name(o.status) for o in page.orders})
        token = page.next_page_token
        if not token:
            return statuses


async def available(channel: aio.Channel) -> int:
    response = await inventory_pb2_grpc.InventoryServiceStub(channel).GetProduct(
        inventory_pb2.GetProductRequest(sku=CHECKOUT_SKU), timeout=CALL_TIMEOUT
    )
    return response.product.available_quantity


async def settled(channel: aio.Channel, shopper: Shopper) -> tuple[dict[str, str], float]:
    """The user's orders once none is PENDING (orders resumes an unfinished saga in the
    background), or as they are at SETTLE_DEADLINE; and how long that took."""
    started = time.monotonic()
    while True:
        statuses = await list_orders(channel, shopper)
        waited = time.monotonic() - started
        if PENDING not in statuses.values() or waited > SETTLE_DEADLINE:
            return statuses, waited
        await asyncio.sleep(0.5)


# --- the part --------------------------------------------------------------------------------


@dataclass
class Overload:
    estimate: float
    baseline: Run
    baseline_controller: list[dict[str, int]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    capacity: float | None = None
    overload: Run | None = None
    logged: list[Logged] = field(default_factory=list)
    controller: list[dict[str, int]] = field(default_factory=list)
    consistency: Consistency | None = None
    crashed: list[str] = field(default_factory=list)
    rate_limit: tuple[str, str] = ("", "")
    """The runtime value of RATE_LIMIT_ENABLED during the part, and after it was restored."""
    min_concurrency: int = 0
    """The controller's floor (mesh.yaml): it never admits fewer calls at once."""
    seconds: float = 0.0


def pids(mesh: RunningMesh) -> dict[str, int | None]:
    return {p.name: p.pid if p.alive() else None for p in mesh.processes()}


@contextlib.asynccontextmanager
async def rate_limits_off(admin: AdminClient) -> AsyncIterator[list[str]]:
    """Both rate limits switched off for the block; yields [value during, value after]."""
    entry = (await admin.runtime()).get(RATE_LIMIT_ENABLED, {})
    before = str(entry.get("final_value", ""))
    await admin.runtime_modify({RATE_LIMIT_ENABLED: "0"})
    values = [str((await admin.runtime())[RATE_LIMIT_ENABLED]["final_value"])]
    try:
        yield values
    finally:
        # An empty value takes the admin layer's override away: mesh.yaml's default again.
        await admin.runtime_modify({RATE_LIMIT_ENABLED: before})
        after = (await admin.runtime()).get(RATE_LIMIT_ENABLED, {})
        values.append(str(after.get("final_value", "default (100 %)")))


async def measure(load: Generator, estimate: float, figures: Overload) -> float:
    """The capacity steps from `estimate` up to the first beyond the bound; the rate of the
    overload run (OVERLOAD_FACTOR x the capacity, or x the first step when none passed)."""
    bound = CAPACITY_P99_FACTOR * figures.baseline.admitted_p99()
    for share in STEP_SHARES:
        print(f"capacity step: {share * estimate:.1f} checkouts/s ...", flush=True)
        figures.steps.append(Step(await load.run(share * estimate, STEP_SECONDS), bound))
        # Two in a row: one slow call in a few hundred (a disk stall) fails a step by itself.
        if not any(step.passed for step in figures.steps[-FAILED_STEPS:]):
            break
    figures.capacity = capacity_of(figures.steps)
    return OVERLOAD_FACTOR * (figures.capacity or figures.steps[0].run.rate)


async def bench_overload(mesh: RunningMesh) -> Overload:
    """The part on a running mesh."""
    started = time.monotonic()
    gateway, admin = mesh.gateway_address, mesh.admin(GATEWAY)
    before = pids(mesh)
    shopper = await sign_up(gateway, "overload")
    async with aio.insecure_channel(gateway) as channel:
        stock_before = await available(channel)
        async with rate_limits_off(admin) as rate_limit:
            print(f"gateway rate limits off: {RATE_LIMIT_ENABLED} = {rate_limit[0]}", flush=True)
            print(f"estimate: {ESTIMATE_ORDERS} closed-loop checkouts ...", flush=True)
            opened = LogMark.of(mesh.gateway.access_log)
            closed = await bench_checkout(gateway, shopper, ESTIMATE_ORDERS, ESTIMATE_WORKERS)
            estimate = closed.confirmed_rate
            if estimate <= 0:
                raise BenchError("the closed-loop checkout estimate was 0 orders/s")
            earlier = set(await list_orders(channel, shopper))
            async with generator(mesh, shopper) as load:
                low = LOW_LOAD_SHARE * estimate
                print(f"low load: {low:.1f} checkouts/s for {LOW_LOAD_SECONDS:.0f} s ...")
                async with controller_samples(admin) as at_low_load:
                    baseline = await load.run(low, LOW_LOAD_SECONDS)
                figures = Overload(estimate, baseline, at_low_load)
                figures.min_concurrency = mesh.topology.gateway.adaptive_concurrency.min_concurrency
                rate = await measure(load, estimate, figures)
                print(f"overload: {rate:.0f} checkouts/s for {OVERLOAD_SECONDS:.0f} s ...")
                # Every earlier call is in the log before the mark, not counted after it.
                earlier_runs = [figures.baseline, *(step.run for step in figures.steps)]
                await logged_since(opened, closed.orders + sum(len(r.calls) for r in earlier_runs))
                mark = LogMark.of(mesh.gateway.access_log)
                async with controller_samples(admin) as figures.controller:
                    figures.overload = overload = await load.run(rate, OVERLOAD_SECONDS)
            figures.logged = await logged_since(mark, len(overload.calls))
            statuses, waited = await settled(channel, shopper)
        stock_sold = stock_before - await available(channel)
    figures.rate_limit = (rate_limit[0], rate_limit[1])
    runs = [figures.baseline, *(step.run for step in figures.steps), overload]
    figures.consistency = Consistency(
        statuses,
        {call.order_id for run in runs for call in run.admitted},
        sum(len(run.failed) for run in runs),
        waited,
        stock_sold,
        earlier,
    )
    after = pids(mesh)
    figures.crashed = [name for name, pid in before.items() if not pid or after.get(name) != pid]
    figures.seconds = time.monotonic() - started
    return figures
