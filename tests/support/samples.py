"""Sample domain values the unit tests of several modules build on: a small catalog, and a
valid order event with the notification made from it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from services.common.clock import from_micros
from services.common.money import Money
from services.inventory.domain import Product, ReservationItem, ReservedItem
from services.notifications.domain import (
    Notification,
    OrderEvent,
    OrderEventType,
    StoredNotification,
    notification_for,
)

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
OCCURRED = from_micros(1_700_000_000_000_000)


def usd(minor_units: int) -> Money:
    return Money("USD", minor_units)


CATALOG = [
    Product("MUG-01", "Mug", "A mug", usd(1299), on_hand=10),
    Product("POSTER-LTD", "Poster", "", usd(4999), on_hand=1),
    Product("STICKER-01", "Sticker", "Vinyl", usd(299), on_hand=1000),
    Product("TSHIRT-01", "T-shirt", "Cotton", usd(2499), on_hand=5),
]


def item(sku: str, quantity: int) -> ReservationItem:
    return ReservationItem(sku, quantity)


def reserved(sku: str, quantity: int, price: int) -> ReservedItem:
    """A line of a stored reservation, at `price` US cents a unit."""
    return ReservedItem(sku, quantity, usd(price))


def make_event(**changes: Any) -> OrderEvent:
    """A valid CONFIRMED event for usr_1, with `changes` applied."""
    event = OrderEvent(
        event_id="evt_1",
        order_id="ord_1",
        user_id="usr_1",
        type=OrderEventType.CONFIRMED,
        reason="",
        total=usd(1299),
        occur_time=OCCURRED,
    )
    return dataclasses.replace(event, **changes)


def make_notification(event: OrderEvent, number: int = 1) -> Notification:
    return notification_for(event, f"ntf_{number}", from_micros(1_700_000_000_000_000 + number))


def make_stored(event: OrderEvent, number: int = 1) -> StoredNotification:
    """`make_notification(event, number)` as stored with sequence `number`."""
    return StoredNotification(number, make_notification(event, number))
