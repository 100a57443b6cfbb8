"""Checkout: PlaceOrder through the gateway from concurrent workers, and the user it orders for."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from grpc import aio

from scripts.bench.settings import CALL_TIMEOUT
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

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


async def bench_checkout(gateway: str, user_id: str, orders: int, workers: int) -> Checkout:
    """`orders` PlaceOrder calls through the gateway from `workers` concurrent callers, after
    one warm-up order per worker."""
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    async with aio.insecure_channel(gateway) as channel:
        stub = orders_pb2_grpc.OrdersServiceStub(channel)

        async def place() -> str:
            request = orders_pb2.PlaceOrderRequest(
                idempotency_key=f"bench-{uuid.uuid4().hex}",
                user_id=user_id,
                items=[orders_pb2.OrderItem(sku=CHECKOUT_SKU, quantity=1)],
                payment_token=PAYMENT_TOKEN,
            )
            try:
                response = await stub.PlaceOrder(request, timeout=CALL_TIMEOUT)
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


async def create_user(gateway: str) -> str:
    async with aio.insecure_channel(gateway) as channel:
        response = await users_pb2_grpc.UsersServiceStub(channel).CreateUser(
            users_pb2.CreateUserRequest(
                request_id=f"bench-{uuid.uuid4().hex}",
                email=f"bench-{uuid.uuid4().hex[:12]}@example.com",
                display_name="Bench",
            ),
            timeout=CALL_TIMEOUT,
        )
        return response.user.user_id
