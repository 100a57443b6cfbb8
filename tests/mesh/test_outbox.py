"""The outbox relay through the real mesh: order events that piled up while notifications
refused every call reach it exactly once, in order per order, in fewer calls than events."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from shop.notifications.v1 import notifications_pb2
from shop.orders.v1 import orders_pb2
from shopmesh.local.mesh import RunningMesh
from tests.support.clients import MeshClients, Shopper
from tests.support.mesh import running_mesh
from tests.support.observe import Stats, pod_fault, stats_of
from tests.support.polling import CALL_TIMEOUT, eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOTIFICATIONS = "notifications-0"
USERS = 3
ORDERS_PER_USER = 4
SERVED_OK = tuple(
    f"cluster.local_app.grpc.shop.notifications.v1.NotificationsService.{method}.0"
    for method in ("PublishOrderEvent", "PublishOrderEvents")
)
"""Publish calls notifications' sidecar passed to the app and the app answered OK."""
CONFIRMED = notifications_pb2.ORDER_EVENT_TYPE_CONFIRMED
CANCELLED = notifications_pb2.ORDER_EVENT_TYPE_CANCELLED


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """This module's mesh: the relay's backoff capped low, so it retries soon after
    notifications takes calls again."""
    async with running_mesh(app_env={"SHOPMESH_ORDERS_RELAY_MAX_BACKOFF": "0.5"}) as running:
        yield running


async def served(stats: Stats) -> int:
    return sum((await stats.delta(*SERVED_OK)).values())


async def test_piled_up_events_are_delivered_once_in_order_in_fewer_calls(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    stats = await stats_of(mesh, NOTIFICATIONS)
    # Every call reaching notifications is refused UNAVAILABLE: the events pile up pending.
    await pod_fault(mesh, NOTIFICATIONS, abort_percent=100, abort_grpc_status=14)
    try:
        # Fresh shoppers: each one's notifications are counted.
        shoppers = [await mesh_clients.create_user() for _ in range(USERS)]
        placed: list[tuple[Shopper, list[orders_pb2.Order]]] = [
            (shopper, [await mesh_clients.place_order(shopper) for _ in range(ORDERS_PER_USER)])
            for shopper in shoppers
        ]
        # Every other order is cancelled: its CONFIRMED and CANCELLED events wait together.
        cancelled = {order.order_id for _, orders in placed for order in orders[::2]}
        for shopper, orders in placed:
            for order in orders[::2]:
                await mesh_clients.orders.CancelOrder(
                    orders_pb2.CancelOrderRequest(order_id=order.order_id),
                    timeout=CALL_TIMEOUT,
                    metadata=shopper.metadata,
                )
        assert await served(stats) == 0
    finally:
        await pod_fault(mesh, NOTIFICATIONS)
    events = USERS * ORDERS_PER_USER + len(cancelled)

    listed: dict[str, list[notifications_pb2.Notification]] = {}

    async def all_delivered() -> bool:
        for shopper in shoppers:
            listed[shopper.user_id] = await mesh_clients.notifications_of(shopper)
        return sum(len(notes) for notes in listed.values()) >= events

    await eventually(all_delivered, within=CALL_TIMEOUT, what=f"{events} notifications")

    for shopper, orders in placed:
        # Newest first: reversed, the order they were stored in.
        stored = [(n.order_id, n.event_type) for n in reversed(listed[shopper.user_id])]
        expected = {(o.order_id, CONFIRMED) for o in orders} | {
            (o.order_id, CANCELLED) for o in orders if o.order_id in cancelled
        }
        # Exactly once: every event has one notification, and nothing else arrived.
        assert Counter(stored) == Counter(expected)
        for order in orders:
            if order.order_id in cancelled:
                confirmed_at = stored.index((order.order_id, CONFIRMED))
                assert confirmed_at < stored.index((order.order_id, CANCELLED))
    # Batches: far fewer calls than events (one event per call would be `events` calls).
    assert await served(stats) < events / 2
