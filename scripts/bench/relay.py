"""Relay lag: checkouts offered at the checkout capacity measured in the same run, and how long
each order event then waited between its outbox row and its notification.

Open loop: order i is sent at i / rate seconds (at most MAX_IN_FLIGHT at once), whether or not
the earlier ones have returned, for RELAY_SECONDS (fewer when the catalog's stock runs out
first: every order must be confirmable, so each takes one unit of the product with the most
left). Then the bench waits for the outbox to drain and reads both services' databases
(read-only, beside the running mesh): an event's lag is its notification's `create_time_us`
(notifications' clock, before its commit) minus the event's `occur_time_us` (orders' clock,
just before the transaction that writes the outbox row), both wall clocks of this machine. So
it includes the wait for orders' own commit and leaves out notifications' commit: one fsync
each way. Meanwhile the backlog (outbox rows still PENDING) is sampled every BACKLOG_INTERVAL.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from rich.console import Console

from scripts.account import Shopper, sign_up
from scripts.bench.checkout import PAYMENT_TOKEN, Checkout, bench_checkout
from scripts.bench.report import two_columns
from scripts.bench.settings import CALL_TIMEOUT, DESCRIPTOR, MESH_FILE
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, up

RELAY_SECONDS = 10.0
MAX_IN_FLIGHT = 64
"""As many checkouts as the gateway admits at once: beyond it the offer itself falls behind."""
LAG_BOUND_MS = 1000.0
"""The figure to reach: at the checkout capacity, no event waits more than 1 s."""
BACKLOG_INTERVAL = 0.1
DRAIN_DEADLINE = 60.0
"""Seconds after the last checkout for the outbox to empty before the bench gives up."""

StopMesh = Callable[[RunningMesh], Awaitable[None]]


@dataclass(frozen=True)
class RelayLag:
    rate: float
    """Checkouts offered per second (the capacity measured before)."""
    offered: int
    seconds: float
    """From the first checkout sent to the last one answered."""
    outcomes: Counter[str]
    lags_ms: list[float]
    """Per delivered event, sorted."""
    undelivered: int
    """Events of the run still pending (or parked) when the drain deadline passed."""
    backlog_max: int
    backlog_at_end: int
    """Events pending when the last checkout returned."""
    drain_seconds: float

    def percentile(self, share: float) -> float:
        rank = max(1, math.ceil(share * len(self.lags_ms)))
        return self.lags_ms[rank - 1]

    @property
    def keeps_up(self) -> bool:
        return bool(self.lags_ms) and not self.undelivered and self.lags_ms[-1] <= LAG_BOUND_MS


def _query(path: Path, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    # Read-only and short-lived: the services own these files; the bench only looks.
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute(sql, parameters).fetchall()
    finally:
        connection.close()


def pending_events(orders_db: Path) -> int:
    """Outbox rows not delivered yet."""
    (count,) = _query(orders_db, "SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'")[0]
    return int(str(count))


def _times(path: Path, sql: str, since_us: int) -> dict[str, int]:
    return {str(event): int(str(us)) for event, us in _query(path, sql, since_us)}


def event_lags(orders_db: Path, notifications_db: Path, since_us: int) -> tuple[list[float], int]:
    """(sorted lags in ms of the events that occurred since `since_us` and have a
    notification, how many of those events have none)."""
    written = _times(
        orders_db, "SELECT event_id, occur_time_us FROM outbox WHERE occur_time_us >= ?", since_us
    )
    stored = _times(
        notifications_db,
        "SELECT event_id, create_time_us FROM notifications WHERE create_time_us >= ?",
        since_us,
    )
    lags = sorted((stored[e] - us) / 1000 for e, us in written.items() if e in stored)
    return lags, len(written) - len(lags)


async def stock(gateway: str) -> Counter[str]:
    """Units available per product of the catalog."""
    async with aio.insecure_channel(gateway) as channel:
        response = await inventory_pb2_grpc.InventoryServiceStub(channel).ListProducts(
            inventory_pb2.ListProductsRequest(page_size=100), timeout=CALL_TIMEOUT
        )
    return Counter({p.sku: p.available_quantity for p in response.products})


def skus_for(orders: int, available: Counter[str]) -> Iterator[str]:
    """One sku per order, each the product with the most units left, while any are left."""
    left = Counter(available)
    for _ in range(orders):
        sku, units = left.most_common(1)[0] if left else ("", 0)
        if units <= 0:
            return
        left[sku] -= 1
        yield sku


async def bench_relay(mesh: RunningMesh, shopper: Shopper, rate: float) -> RelayLag:
    """Checkouts at `rate` for RELAY_SECONDS, then the lag of every event they wrote."""
    gateway = mesh.gateway_address
    orders_db = mesh.paths.database("orders")
    notifications_db = mesh.paths.database("notifications")
    skus = list(skus_for(round(rate * RELAY_SECONDS), await stock(gateway)))
    outcomes: Counter[str] = Counter()
    backlog: list[int] = []
    since_us = time.time_ns() // 1000
    async with aio.insecure_channel(gateway) as channel:
        stub = orders_pb2_grpc.OrdersServiceStub(channel)
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def place(sku: str) -> None:
            request = orders_pb2.PlaceOrderRequest(
                idempotency_key=f"bench-relay-{uuid.uuid4().hex}",
                user_id=shopper.user_id,
                items=[orders_pb2.OrderItem(sku=sku, quantity=1)],
                payment_token=PAYMENT_TOKEN,
            )
            try:
                response = await stub.PlaceOrder(
                    request, timeout=CALL_TIMEOUT, metadata=shopper.metadata
                )
                outcomes[orders_pb2.OrderStatus.Name(response.order.status)] += 1
            except aio.AioRpcError as error:
                outcomes[error.code().name] += 1
            finally:
                slots.release()

        async def sample() -> None:
            while True:
                backlog.append(await asyncio.to_thread(pending_events, orders_db))
                await asyncio.sleep(BACKLOG_INTERVAL)

        sampler = asyncio.create_task(sample())
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            calls = []
            for n, sku in enumerate(skus):
                # Pacing an open-loop offer, not synchronization: order n leaves at n / rate.
                await asyncio.sleep(max(0.0, started + n / rate - loop.time()))
                await slots.acquire()
                calls.append(asyncio.create_task(place(sku)))
            await asyncio.gather(*calls)
            seconds = loop.time() - started
            at_end = await asyncio.to_thread(pending_events, orders_db)
            drain_deadline = loop.time() + DRAIN_DEADLINE
            while await asyncio.to_thread(pending_events, orders_db):
                if loop.time() > drain_deadline:
                    break
                await asyncio.sleep(BACKLOG_INTERVAL)
            drained = loop.time() - started - seconds
        finally:
            sampler.cancel()
    lags, undelivered = await asyncio.to_thread(event_lags, orders_db, notifications_db, since_us)
    return RelayLag(
        rate=rate,
        offered=len(skus),
        seconds=seconds,
        outcomes=outcomes,
        lags_ms=lags,
        undelivered=undelivered,
        backlog_max=max(backlog, default=at_end),
        backlog_at_end=at_end,
        drain_seconds=drained,
    )


@dataclass(frozen=True)
class RelayRun:
    """`--relay` alone: the capacity as the checkout bench measures it, then the lag at it."""

    checkout: Checkout
    lag: RelayLag


async def bench_relay_only(root: Path, orders: int, workers: int, stop: StopMesh) -> RelayRun:
    """A fresh mesh: the checkout bench (its throughput is the capacity), then bench_relay."""
    mesh = await up(
        MeshOptions(
            state_dir=root / "mesh", topology=MESH_FILE, descriptor=DESCRIPTOR, dashboard=False
        )
    )
    try:
        shopper = await sign_up(mesh.gateway_address, "relay")
        checkout = await bench_checkout(mesh.gateway_address, shopper, orders, workers)
        lag = await bench_relay(mesh, shopper, checkout.orders / checkout.seconds)
    finally:
        await stop(mesh)
    return RelayRun(checkout, lag)


def render_relay(lag: RelayLag, console: Console) -> None:
    """The relay's figures and the verdict."""
    achieved = sum(lag.outcomes.values()) / lag.seconds if lag.seconds else 0.0
    console.print(
        "[bold]Outbox relay lag[/bold] (outbox row written -> notification stored), "
        "checkouts at the checkout capacity measured above, open loop"
    )
    rows = [
        ("offered", f"{lag.rate:.1f} orders/s, {lag.offered} orders"),
        ("answered", f"{achieved:.1f} orders/s over {lag.seconds:.1f} s"),
        ("outcomes", ", ".join(f"{k}: {v}" for k, v in lag.outcomes.most_common())),
        ("events delivered / not", f"{len(lag.lags_ms)} / {lag.undelivered}"),
    ]
    if lag.lags_ms:
        rows += [
            ("lag p50", f"{lag.percentile(0.5):.1f} ms"),
            ("lag p99", f"{lag.percentile(0.99):.1f} ms"),
            ("lag max", f"{lag.lags_ms[-1]:.1f} ms"),
        ]
    rows += [
        ("backlog max (sampled)", f"{lag.backlog_max} events"),
        ("backlog at the last answer", f"{lag.backlog_at_end} events"),
        ("drained after", f"{lag.drain_seconds:.2f} s"),
        (
            f"verdict: max lag <= {LAG_BOUND_MS / 1000:.0f} s",
            "PASS" if lag.keeps_up else "FAIL",
        ),
    ]
    console.print(two_columns(rows, right=True))


def relay_problems(lag: RelayLag) -> list[str]:
    found = []
    if not lag.keeps_up:
        found.append(
            f"the relay fell behind: max lag {lag.lags_ms[-1] if lag.lags_ms else math.inf:.0f} "
            f"ms, {lag.undelivered} events undelivered"
        )
    confirmed = lag.outcomes["ORDER_STATUS_CONFIRMED"]
    if confirmed != lag.offered:
        found.append(f"not every relay-run order was confirmed: {dict(lag.outcomes)}")
    return found
