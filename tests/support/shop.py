"""The five services running in this process, orders calling the other four through its config,
and helpers to drive them (fixtures using them live in tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from grpc import aio

from services.common.config import ServiceConfig
from services.common.server import App, RunningService
from services.inventory.app import build as build_inventory
from services.notifications.app import build as build_notifications
from services.orders.app import build as build_orders
from services.payments.app import build as build_payments
from services.users.app import build as build_users
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from tests.support.callers import as_user
from tests.support.services import ServiceRunner

Channels = Callable[[str], aio.Channel]
T = TypeVar("T")


@dataclass
class Shop:
    """The five running services and a client stub for each."""

    services: ServiceRunner
    running: dict[str, RunningService]
    orders: orders_pb2_grpc.OrdersServiceAsyncStub
    users: users_pb2_grpc.UsersServiceAsyncStub
    inventory: inventory_pb2_grpc.InventoryServiceAsyncStub
    payments: payments_pb2_grpc.PaymentsServiceAsyncStub
    notifications: notifications_pb2_grpc.NotificationsServiceAsyncStub

    def db_path(self, service: str) -> Path | str:
        """Where `service`'s store lives: its SQLite file or its Postgres URL."""
        return self.services.config(service).database

    async def new_user(self) -> str:
        created = await self.users.CreateUser(
            users_pb2.CreateUserRequest(
                email=f"{uuid.uuid4().hex[:8]}@example.com", display_name="Ada"
            )
        )
        return created.user.user_id

    async def available(self, sku: str) -> int:
        response = await self.inventory.GetProduct(inventory_pb2.GetProductRequest(sku=sku))
        return response.product.available_quantity

    async def notifications_of(self, user_id: str) -> list[notifications_pb2.Notification]:
        response = await self.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=user_id, page_size=500),
            # The test's own channel may be reconnecting after notifications restarted.
            wait_for_ready=True,
            timeout=10,
            metadata=as_user(user_id),
        )
        return list(response.notifications)


UPSTREAMS = ("users", "inventory", "payments", "notifications")
BUILDS = {
    "users": build_users,
    "inventory": build_inventory,
    "payments": build_payments,
    "notifications": build_notifications,
}


async def start_shop(
    services: ServiceRunner,
    channels: Channels,
    replace: dict[str, Callable[[ServiceConfig], Awaitable[App]]] | None = None,
) -> Shop:
    """Start the four upstreams (any of them swapped for a test double) and orders."""
    builds = {**BUILDS, **(replace or {})}
    running = {name: await services.start(name, builds[name]) for name in UPSTREAMS}
    running["orders"] = await services.start(
        "orders", build_orders, upstreams={name: running[name].address for name in UPSTREAMS}
    )

    def channel(name: str) -> aio.Channel:
        return channels(running[name].address)

    return Shop(
        services=services,
        running=running,
        orders=orders_pb2_grpc.OrdersServiceStub(channel("orders")),
        users=users_pb2_grpc.UsersServiceStub(channel("users")),
        inventory=inventory_pb2_grpc.InventoryServiceStub(channel("inventory")),
        payments=payments_pb2_grpc.PaymentsServiceStub(channel("payments")),
        notifications=notifications_pb2_grpc.NotificationsServiceStub(channel("notifications")),
    )


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    """Call `probe` until `done(result)`, for at most 10 seconds; returns the last result."""
    deadline = time.monotonic() + 10.0
    while True:
        result = await probe()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"gave up waiting; last result: {result!r}"
        await asyncio.sleep(0.02)


def place_request(
    user_id: str,
    key: str = "key-1",
    items: tuple[tuple[str, int], ...] = (("MUG-01", 2), ("STICKER-01", 3)),
    token: str = "tok_visa",
) -> orders_pb2.PlaceOrderRequest:
    return orders_pb2.PlaceOrderRequest(
        idempotency_key=key,
        user_id=user_id,
        items=[orders_pb2.OrderItem(sku=sku, quantity=quantity) for sku, quantity in items],
        payment_token=token,
    )


def usd(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", minor_units=minor_units)


async def as_async(function: Callable[..., T], *args: object) -> T:
    """Run a synchronous probe as a coroutine, for `eventually`."""
    return function(*args)
