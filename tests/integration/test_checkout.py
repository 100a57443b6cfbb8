"""Checkout across all five services, each a real grpc.aio server in this process on a temporary
Unix socket: orders calling users, inventory, payments and notifications through its config."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest
from grpc import aio

from services.common.config import ServiceConfig
from services.common.errors import FieldViolation
from services.common.server import App, Registration
from services.common.status import field_violations
from services.inventory.app import build as build_inventory
from services.notifications.app import build as build_notifications
from services.payments.app import build as build_payments
from shop.inventory.v1 import inventory_pb2
from shop.notifications.v1 import notifications_pb2
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2, users_pb2_grpc
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS, count_rows
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner
from tests.support.shop import (
    Channels,
    Shop,
    as_async,
    eventually,
    place_request,
    start_shop,
    usd,
)

pytestmark = ON_BOTH_BACKENDS

# --- checkout ----------------------------------------------------------------------------


async def test_full_checkout_confirms_charges_commits_and_notifies(shop: Shop) -> None:
    user_id = await shop.new_user()
    mugs, stickers = await shop.available("MUG-01"), await shop.available("STICKER-01")

    placed = await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))

    order = placed.order
    assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert order.user_id == user_id
    assert order.total == usd(2 * 1299 + 3 * 299)
    assert [(i.sku, i.quantity, i.unit_price) for i in order.items] == [
        ("MUG-01", 2, usd(1299)),
        ("STICKER-01", 3, usd(299)),
    ]
    assert (await shop.available("MUG-01"), await shop.available("STICKER-01")) == (
        mugs - 2,
        stickers - 3,
    )
    payment = await shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=order.payment_id), metadata=as_user(user_id)
    )
    assert (payment.payment.order_id, payment.payment.amount, payment.payment.status) == (
        order.order_id,
        order.total,
        payments_pb2.PAYMENT_STATUS_CAPTURED,
    )
    fetched = await shop.orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id=order.order_id), metadata=as_user(user_id)
    )
    assert fetched.order == order

    notes = await eventually(lambda: shop.notifications_of(user_id), lambda n: len(n) == 1)
    assert (notes[0].order_id, notes[0].event_id) == (
        order.order_id,
        f"{order.order_id}:confirmed",
    )
    assert notes[0].event_type == notifications_pb2.ORDER_EVENT_TYPE_CONFIRMED


async def test_place_order_repeated_with_one_key_makes_one_order_and_one_charge(
    shop: Shop,
) -> None:
    user_id = await shop.new_user()

    first = await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))
    second = await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))

    assert second.order == first.order
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 1
    listed = await shop.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=user_id), metadata=as_user(user_id)
    )
    assert [o.order_id for o in listed.orders] == [first.order.order_id]


async def test_same_key_with_different_items_is_already_exists(shop: Shop) -> None:
    user_id = await shop.new_user()
    first = await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.PlaceOrder(
            place_request(user_id, items=(("MUG-01", 1),)), metadata=as_user(user_id)
        )

    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert dict(info.metadata) == {"idempotency_key": "key-1", "order_id": first.order.order_id}


async def test_declined_card_rejects_and_restores_the_stock(shop: Shop) -> None:
    user_id = await shop.new_user()
    mugs = await shop.available("MUG-01")

    placed = await shop.orders.PlaceOrder(
        place_request(user_id, token="tok_chargeDeclined"), metadata=as_user(user_id)
    )

    assert placed.order.status == orders_pb2.ORDER_STATUS_REJECTED
    assert placed.order.rejection_reason == "CARD_DECLINED"
    assert placed.order.payment_id == ""
    assert await shop.available("MUG-01") == mugs
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 0
    notes = await eventually(lambda: shop.notifications_of(user_id), lambda n: len(n) == 1)
    assert notes[0].event_type == notifications_pb2.ORDER_EVENT_TYPE_REJECTED


async def test_short_stock_rejects_with_insufficient_stock(shop: Shop) -> None:
    user_id = await shop.new_user()

    placed = await shop.orders.PlaceOrder(
        place_request(user_id, items=(("POSTER-LTD", 2),)), metadata=as_user(user_id)
    )

    assert placed.order.status == orders_pb2.ORDER_STATUS_REJECTED
    assert placed.order.rejection_reason == "INSUFFICIENT_STOCK"
    assert await shop.available("POSTER-LTD") == 1


async def test_unknown_user_and_unknown_product_are_rejected(shop: Shop) -> None:
    user_id = await shop.new_user()

    # Signed in with an account that no longer exists (or never did).
    no_user = await shop.orders.PlaceOrder(
        place_request("usr_nobody", key="a"), metadata=as_user("usr_nobody")
    )
    no_product = await shop.orders.PlaceOrder(
        place_request(user_id, key="b", items=(("NOPE-01", 1),)), metadata=as_user(user_id)
    )

    assert (no_user.order.status, no_user.order.rejection_reason) == (
        orders_pb2.ORDER_STATUS_REJECTED,
        "USER_NOT_FOUND",
    )
    assert (no_product.order.status, no_product.order.rejection_reason) == (
        orders_pb2.ORDER_STATUS_REJECTED,
        "PRODUCT_NOT_FOUND",
    )


async def test_order_in_another_currency_is_rejected_and_its_reserved_stock_released(
    shop: Shop,
) -> None:
    user_id = await shop.new_user()
    mugs = await shop.available("MUG-01")
    request = place_request(user_id, items=(("MUG-01", 2),))
    request.currency_code = "EUR"

    placed = await shop.orders.PlaceOrder(request, metadata=as_user(user_id))

    order = placed.order
    assert (order.status, order.rejection_reason) == (
        orders_pb2.ORDER_STATUS_REJECTED,
        "CURRENCY_MISMATCH",
    )
    assert not order.HasField("total")
    # The catalog's USD prices came with the reservation: the stock it held is back.
    reservation = await shop.inventory.GetReservation(
        inventory_pb2.GetReservationRequest(order_id=order.order_id)
    )
    assert reservation.reservation.status == inventory_pb2.RESERVATION_STATUS_RELEASED
    assert await shop.available("MUG-01") == mugs
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 0


async def test_bad_input_is_invalid_argument_listing_every_field(shop: Shop) -> None:
    request = orders_pb2.PlaceOrderRequest(
        user_id="usr_1",
        items=[
            orders_pb2.OrderItem(sku="MUG-01", quantity=0),
            orders_pb2.OrderItem(sku="", quantity=1),
        ],
        currency_code="dollars",
    )

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.PlaceOrder(request, metadata=as_user("usr_1"))

    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "INVALID_ARGUMENT"
    assert field_violations(raised.value) == [
        FieldViolation("idempotency_key", "must not be empty"),
        FieldViolation("payment_token", "must not be empty"),
        FieldViolation("items[0].quantity", "must be between 1 and 1000"),
        FieldViolation("items[1].sku", "must not be empty"),
        FieldViolation("currency_code", "must be three upper-case letters, e.g. USD"),
    ]
    assert count_rows(shop.db_path("orders"), "SELECT COUNT(*) FROM orders") == 0


async def test_get_unknown_order_is_not_found(shop: Shop) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.GetOrder(
            orders_pb2.GetOrderRequest(order_id="ord_nope"), metadata=as_user("usr_1")
        )

    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert (info.reason, dict(info.metadata)) == ("ORDER_NOT_FOUND", {"order_id": "ord_nope"})


# --- cancellation ------------------------------------------------------------------------


async def test_cancel_refunds_and_puts_the_stock_back(shop: Shop) -> None:
    user_id = await shop.new_user()
    mugs = await shop.available("MUG-01")
    placed = await shop.orders.PlaceOrder(
        place_request(user_id, items=(("MUG-01", 4),)), metadata=as_user(user_id)
    )
    assert await shop.available("MUG-01") == mugs - 4

    cancelled = await shop.orders.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id=placed.order.order_id, reason="changed my mind"),
        metadata=as_user(user_id),
    )
    again = await shop.orders.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id=placed.order.order_id), metadata=as_user(user_id)
    )

    assert cancelled.order.status == orders_pb2.ORDER_STATUS_CANCELLED
    assert cancelled.order.cancel_reason == "changed my mind"
    assert again.order == cancelled.order
    assert await shop.available("MUG-01") == mugs
    payment = await shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=placed.order.payment_id),
        metadata=as_user(user_id),
    )
    assert payment.payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    notes = await eventually(lambda: shop.notifications_of(user_id), lambda n: len(n) == 2)
    assert sorted(n.event_type for n in notes) == [
        notifications_pb2.ORDER_EVENT_TYPE_CONFIRMED,
        notifications_pb2.ORDER_EVENT_TYPE_CANCELLED,
    ]


async def test_cancelling_a_rejected_order_is_failed_precondition(shop: Shop) -> None:
    user_id = await shop.new_user()
    placed = await shop.orders.PlaceOrder(
        place_request(user_id, token="tok_chargeDeclined"), metadata=as_user(user_id)
    )

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=placed.order.order_id), metadata=as_user(user_id)
        )

    info = expect_error_info(raised.value, grpc.StatusCode.FAILED_PRECONDITION)
    assert info.reason == "ORDER_NOT_CANCELLABLE"
    assert dict(info.metadata) == {"order_id": placed.order.order_id, "status": "REJECTED"}


# --- failures of dependencies ------------------------------------------------------------


async def test_events_reach_notifications_exactly_once_across_its_outage(shop: Shop) -> None:
    user_id = await shop.new_user()
    await shop.services.stop(shop.running["notifications"])

    order_ids = []
    for n in range(3):
        placed = await shop.orders.PlaceOrder(
            place_request(user_id, key=f"k{n}"), metadata=as_user(user_id)
        )
        assert placed.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
        order_ids.append(placed.order.order_id)
    orders_db = shop.db_path("orders")

    # The relay keeps trying while notifications is down, and nothing is marked delivered.
    await eventually(
        lambda: as_async(count_rows, orders_db, "SELECT MAX(attempts) FROM outbox"),
        lambda attempts: attempts >= 1,
    )
    assert count_rows(orders_db, "SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'") == 3

    shop.running["notifications"] = await shop.services.start("notifications", build_notifications)

    notes = await eventually(lambda: shop.notifications_of(user_id), lambda n: len(n) >= 3)
    assert sorted(n.event_id for n in notes) == sorted(f"{o}:confirmed" for o in order_ids)
    await eventually(
        lambda: as_async(
            count_rows, orders_db, "SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'"
        ),
        lambda pending: pending == 0,
    )
    assert len(await shop.notifications_of(user_id)) == 3


async def settled(shop: Shop, user_id: str, order_id: str) -> orders_pb2.GetOrderResponse:
    """The order once it is no longer PENDING (recovery has driven it to its end)."""
    return await eventually(
        lambda: shop.orders.GetOrder(
            orders_pb2.GetOrderRequest(order_id=order_id), metadata=as_user(user_id)
        ),
        lambda response: response.order.status != orders_pb2.ORDER_STATUS_PENDING,
    )


async def test_order_pending_on_an_unreachable_dependency_is_resumed_when_it_returns(
    shop: Shop,
) -> None:
    user_id = await shop.new_user()
    await shop.services.stop(shop.running["payments"])

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))

    info = expect_error_info(raised.value, grpc.StatusCode.UNAVAILABLE)
    assert info.reason == "ORDER_PENDING"
    order_id = info.metadata["order_id"]
    assert info.metadata["step"] == "CHARGE_PAYMENT"
    pending = await shop.orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id=order_id), metadata=as_user(user_id)
    )
    assert pending.order.status == orders_pb2.ORDER_STATUS_PENDING

    await shop.services.start("payments", build_payments)

    confirmed = await settled(shop, user_id, order_id)
    assert confirmed.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 1
    # The recovery sweep charged for the shopper, with no request behind it: the payment is
    # theirs to read.
    payment = await shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=confirmed.order.payment_id),
        metadata=as_user(user_id),
    )
    assert payment.payment.order_id == order_id


class _Unpriced:
    """An inventory servicer as it was before reservations carried prices: ReserveStock
    answers without `unit_price`; every other method is `inner`'s."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def ReserveStock(
        self, request: inventory_pb2.ReserveStockRequest, context: aio.ServicerContext[Any, Any]
    ) -> inventory_pb2.ReserveStockResponse:
        response: inventory_pb2.ReserveStockResponse = await self._inner.ReserveStock(
            request, context
        )
        for item in response.reservation.items:
            item.ClearField("unit_price")
        return response


async def build_unpriced_inventory(config: ServiceConfig) -> App:
    app = await build_inventory(config)
    app.registrations = [replace(r, servicer=_Unpriced(r.servicer)) for r in app.registrations]
    return app


async def test_order_waits_for_an_inventory_that_does_not_price_reservations_yet(
    services: ServiceRunner, channels: Channels, fast_orders: None
) -> None:
    shop = await start_shop(services, channels, replace={"inventory": build_unpriced_inventory})
    user_id = await shop.new_user()

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.PlaceOrder(place_request(user_id), metadata=as_user(user_id))

    # Not priced, so not charged: the order waits at its step, its stock held...
    info = expect_error_info(raised.value, grpc.StatusCode.UNAVAILABLE)
    assert (info.reason, info.metadata["step"]) == ("ORDER_PENDING", "RESERVE_AND_PRICE")
    order_id = info.metadata["order_id"]
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 0

    # ...until inventory is upgraded, when recovery prices it from the same reservation.
    await shop.services.stop(shop.running["inventory"])
    await shop.services.start("inventory", build_inventory)
    confirmed = await settled(shop, user_id, order_id)
    assert confirmed.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert confirmed.order.total == usd(2 * 1299 + 3 * 299)


class HangingUsers(users_pb2_grpc.UsersServiceServicer):
    """A users service that never answers GetUser, recording the deadline and the metadata
    each call came with."""

    def __init__(self) -> None:
        self.time_remaining: list[float | None] = []
        self.metadata: list[dict[str, str | bytes]] = []

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.GetUserResponse:
        self.time_remaining.append(context.time_remaining())
        self.metadata.append(dict(context.invocation_metadata() or ()))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _not_part_of_this_double(
        self, request: Any, context: aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of this test double")

    CreateUser = SignIn = RenewToken = GetJwks = _not_part_of_this_double


async def start_with_hanging_users(
    services: ServiceRunner, channels: Channels
) -> tuple[Shop, HangingUsers]:
    """The shop with users swapped for a HangingUsers."""
    hanging = HangingUsers()

    async def build_hanging_users(config: ServiceConfig) -> App:
        return App(
            [
                Registration(
                    "shop.users.v1.UsersService",
                    hanging,
                    users_pb2_grpc.add_UsersServiceServicer_to_server,
                )
            ]
        )

    return await start_shop(services, channels, replace={"users": build_hanging_users}), hanging


async def test_short_client_deadline_is_deadline_exceeded_and_reaches_downstream(
    services: ServiceRunner, channels: Channels, fast_orders: None
) -> None:
    shop, hanging = await start_with_hanging_users(services, channels)
    started = time.monotonic()

    with pytest.raises(aio.AioRpcError) as raised:
        await shop.orders.PlaceOrder(place_request("usr_1"), timeout=0.5, metadata=as_user("usr_1"))

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    # Orders passed on what was left of the 0.5 s, not its own 10 s default.
    remaining = hanging.time_remaining[0]
    assert remaining is not None
    assert remaining <= 0.5


async def test_a_call_orders_makes_carries_the_trace_and_request_id_of_the_call_it_serves(
    services: ServiceRunner, channels: Channels, fast_orders: None
) -> None:
    """What orders' sidecar needs to make its egress span a child in the checkout's trace."""
    shop, hanging = await start_with_hanging_users(services, channels)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    request_id = "3f0c9a52-81a7-4c82-8c03-64f9e2b0ee7c"
    metadata = (
        ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),
        ("x-request-id", request_id),
        *as_user("usr_1"),
    )

    with pytest.raises(aio.AioRpcError):
        await shop.orders.PlaceOrder(place_request("usr_1"), timeout=0.5, metadata=metadata)

    (received,) = hanging.metadata
    version, received_trace, parent, flags = str(received["traceparent"]).split("-")
    assert (version, received_trace, flags) == ("00", trace_id, "01")
    assert len(parent) == 16
    assert received["x-request-id"] == request_id
