"""The outbox relay between the real orders and notifications services in this process: an
event notifications refuses for good is parked, and the rest of its batch still goes."""

from __future__ import annotations

import time

from services.notifications.app import build as build_notifications
from services.notifications.domain import MAX_REASON_LENGTH
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS, count_rows, query
from tests.support.shop import Shop, as_async, eventually, place_request

pytestmark = ON_BOTH_BACKENDS

PENDING = "SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'"


async def test_a_refused_event_is_parked_and_the_rest_of_its_batch_delivered(shop: Shop) -> None:
    user_id = await shop.new_user()
    await shop.services.stop(shop.running["notifications"])
    first = (
        await shop.orders.PlaceOrder(place_request(user_id, "k-1"), metadata=as_user(user_id))
    ).order
    orders_db = shop.db_path("orders")
    # Orders never writes an event notifications refuses; forge one between two real ones
    # (its reason is too long), so that all three wait in one batch.
    refused = f"{first.order_id}:cancelled"
    query(
        orders_db,
        "INSERT INTO outbox (event_id, order_id, user_id, event_type, reason,"
        " currency_code, total_minor, occur_time_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            refused,
            first.order_id,
            user_id,
            "CANCELLED",
            "x" * (MAX_REASON_LENGTH + 1),
            "USD",
            0,
            time.time_ns() // 1000,
        ),
    )
    second = (
        await shop.orders.PlaceOrder(place_request(user_id, "k-2"), metadata=as_user(user_id))
    ).order
    assert count_rows(orders_db, PENDING) == 3

    shop.running["notifications"] = await shop.services.start("notifications", build_notifications)

    await eventually(lambda: as_async(count_rows, orders_db, PENDING), lambda n: n == 0)
    notes = await shop.notifications_of(user_id)
    assert [n.event_id for n in reversed(notes)] == [
        f"{first.order_id}:confirmed",
        f"{second.order_id}:confirmed",
    ]
    [(state, error)] = query(
        orders_db, "SELECT state, last_error FROM outbox WHERE event_id = ?", (refused,)
    )
    assert state == "FAILED"
    assert "invalid PublishOrderEvents request" in str(error)
