"""Checkout: PlaceOrder through the gateway from concurrent workers, as one signed-in shopper."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from grpc import aio

from scripts.account import Shopper
from scripts.bench.settings import CALL_TIMEOUT
from shop.orders.v1 import orders_pb2, orders_pb2_grpc

CHECKOUT_SKU = "STICKER-01"
"""A seed-catalog product with enough stock (1000) for every benchmark order."""
PAYMENT_TOKEN = "tok_visa"


# --- checkout through the gateway -----------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    orders: int
    workers: int
    seconds: float
    latencies_ms: list[float]
    outcomes: Counter[str]

    def percentile(self, share: float) -> float:
        rank = max(1, math.ceil(share * len(self.latencies_ms)))
        return self.latencies_ms[rank - 1]

    @property
    def confirmed_rate(self) -> float:
        """Confirmed orders per second."""
        return self.outcomes["ORDER_STATUS_CONFIRMED"] / self.seconds


async def bench_checkout(gateway: str, shopper: Shopper, orders: int, workers: int) -> Checkout:
    """`orders` PlaceOrder calls through the gateway as `shopper` from `workers` concurrent
    callers, after one warm-up order per worker."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    async with aio.insecure_channel(gateway) as channel:
        stub = orders_pb2_grpc.OrdersServiceStub(channel)

        async def place() -> str:
            request = orders_pb2.PlaceOrderRequest(
                idempotency_key=f"bench-{uuid.uuid4().hex}",
                user_id=shopper.user_id,
                items=[orders_pb2.OrderItem(sku=CHECKOUT_SKU, quantity=1)],
                payment_token=PAYMENT_TOKEN,
            )
            try:
                response = await stub.PlaceOrder(
                    request, timeout=CALL_TIMEOUT, metadata=shopper.metadata
                )
            except aio.AioRpcError as error:
                return error.code().name
            return orders_pb2.OrderStatus.Name(response.order.status)

        for _ in range(workers):
            await place()
        remaining = iter(range(orders))

        async def worker() -> None:
            for _ in remaining:
                started = time.perf_counter()
                outcome = await place()
                latencies.append((time.perf_counter() - started) * 1000)
                outcomes[outcome] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
    return Checkout(orders, workers, elapsed, sorted(latencies), outcomes)
