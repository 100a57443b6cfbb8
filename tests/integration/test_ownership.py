"""Every service answers only for the caller's own data (the x-shop-user caller the gateway
sets), each a real grpc.aio server in this process: a call naming no caller is UNAUTHENTICATED
SIGN_IN_REQUIRED; someone else's order, payment or account is NOT_FOUND exactly as an unknown
id is; a `user_id` naming someone else is PERMISSION_DENIED NOT_YOUR_DATA; and orders makes
every downstream call for the order's shopper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from services.common.caller import NOT_YOUR_DATA, SIGN_IN_REQUIRED
from services.common.database import Database, Migrations
from services.common.errors import ERROR_DOMAIN
from services.common.sql import Connection
from services.orders.domain import new_order_id
from services.payments.app import build as build_payments
from services.payments.domain import new_payment_id
from services.payments.store import POSTGRES_SCHEMA_V1, SCHEMA_V1
from services.users.domain import new_user_id
from shop.notifications.v1 import notifications_pb2
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2
from tests.support.callers import CallerLog, as_user, refusal
from tests.support.databases import ON_BOTH_BACKENDS, count_rows
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner
from tests.support.shop import (
    BUILDS,
    UPSTREAMS,
    Channels,
    Shop,
    eventually,
    place_request,
    start_shop,
)

pytestmark = ON_BOTH_BACKENDS

Call = Callable[[Shop, Any], Awaitable[Any]]


async def place(shop: Shop, user_id: str, key: str = "key-1") -> orders_pb2.Order:
    """A CONFIRMED order of `user_id`, placed as them."""
    placed = await shop.orders.PlaceOrder(place_request(user_id, key), metadata=as_user(user_id))
    assert placed.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    return placed.order


async def refused(call: Awaitable[Any]) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return raised.value


async def watch_refusal(shop: Shop, request: Any, metadata: Any) -> aio.AioRpcError:
    call = shop.notifications.WatchNotifications(request, metadata=metadata, timeout=10)
    return await refused(call.read())


# --- no caller ---------------------------------------------------------------------------

OWNERSHIP_CHECKED: dict[str, Call] = {
    "PlaceOrder": lambda shop, metadata: shop.orders.PlaceOrder(
        place_request("usr_1"), metadata=metadata
    ),
    "GetOrder": lambda shop, metadata: shop.orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id="ord_1"), metadata=metadata
    ),
    "ListOrders": lambda shop, metadata: shop.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id="usr_1"), metadata=metadata
    ),
    "CancelOrder": lambda shop, metadata: shop.orders.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id="ord_1"), metadata=metadata
    ),
    "GetPayment": lambda shop, metadata: shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id="pay_1"), metadata=metadata
    ),
    "ListNotifications": lambda shop, metadata: shop.notifications.ListNotifications(
        notifications_pb2.ListNotificationsRequest(user_id="usr_1"), metadata=metadata
    ),
    "WatchNotifications": lambda shop, metadata: watch_refusal(
        shop, notifications_pb2.WatchNotificationsRequest(user_id="usr_1"), metadata
    ),
    "GetUser": lambda shop, metadata: shop.users.GetUser(
        users_pb2.GetUserRequest(user_id="usr_1"), metadata=metadata
    ),
}


@pytest.mark.parametrize("method", OWNERSHIP_CHECKED)
@pytest.mark.parametrize(
    "metadata",
    [(), as_user(""), as_user("usr_1") + as_user("usr_2")],
    ids=["no header", "empty header", "two callers"],
)
async def test_a_call_naming_no_caller_is_sign_in_required(
    shop: Shop, method: str, metadata: Any
) -> None:
    outcome = OWNERSHIP_CHECKED[method](shop, metadata)
    error = await outcome if method == "WatchNotifications" else await refused(outcome)

    info = expect_error_info(error, grpc.StatusCode.UNAUTHENTICATED)
    assert (info.reason, info.domain) == (SIGN_IN_REQUIRED, ERROR_DOMAIN)


# --- orders ------------------------------------------------------------------------------


async def test_someone_elses_order_is_not_found_exactly_like_an_unknown_id(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    order = await place(shop, ada)
    unknown = new_order_id()

    def get(order_id: str) -> Awaitable[Any]:
        return shop.orders.GetOrder(
            orders_pb2.GetOrderRequest(order_id=order_id), metadata=as_user(grace)
        )

    def cancel(order_id: str) -> Awaitable[Any]:
        return shop.orders.CancelOrder(
            orders_pb2.CancelOrderRequest(order_id=order_id), metadata=as_user(grace)
        )

    for call in (get, cancel):
        theirs = await refused(call(order.order_id))
        assert expect_error_info(theirs, grpc.StatusCode.NOT_FOUND).reason == "ORDER_NOT_FOUND"
        assert refusal(theirs, order.order_id) == refusal(await refused(call(unknown)), unknown)

    # The owner still reads it, unchanged: grace's CancelOrder did nothing.
    own = await shop.orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id=order.order_id), metadata=as_user(ada)
    )
    assert own.order == order
    payment = await shop.payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=order.payment_id), metadata=as_user(ada)
    )
    assert payment.payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED


async def test_list_orders_of_another_user_is_permission_denied(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    order = await place(shop, ada)

    error = await refused(
        shop.orders.ListOrders(orders_pb2.ListOrdersRequest(user_id=ada), metadata=as_user(grace))
    )

    info = expect_error_info(error, grpc.StatusCode.PERMISSION_DENIED)
    assert (info.reason, dict(info.metadata)) == (NOT_YOUR_DATA, {"field": "user_id"})
    # An empty user_id lists the caller's own orders.
    own = await shop.orders.ListOrders(orders_pb2.ListOrdersRequest(), metadata=as_user(ada))
    assert [o.order_id for o in own.orders] == [order.order_id]
    theirs = await shop.orders.ListOrders(orders_pb2.ListOrdersRequest(), metadata=as_user(grace))
    assert list(theirs.orders) == []


async def test_placing_an_order_for_another_user_is_permission_denied(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()

    error = await refused(shop.orders.PlaceOrder(place_request(ada), metadata=as_user(grace)))

    info = expect_error_info(error, grpc.StatusCode.PERMISSION_DENIED)
    assert info.reason == NOT_YOUR_DATA
    assert count_rows(shop.db_path("orders"), "SELECT COUNT(*) FROM orders") == 0


async def test_an_order_without_user_id_is_the_callers_and_the_same_request_as_naming_them(
    shop: Shop,
) -> None:
    ada = await shop.new_user()
    anonymous = place_request("", "key-1")

    first = await shop.orders.PlaceOrder(anonymous, metadata=as_user(ada))
    named = await shop.orders.PlaceOrder(place_request(ada, "key-1"), metadata=as_user(ada))

    assert first.order.user_id == ada
    assert first.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert named.order == first.order
    assert count_rows(shop.db_path("payments"), "SELECT COUNT(*) FROM payments") == 1


async def test_another_shoppers_key_does_not_give_their_order(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    await place(shop, ada, key="shared-key")

    error = await refused(
        shop.orders.PlaceOrder(place_request("", "shared-key"), metadata=as_user(grace))
    )

    # Idempotency keys stay global: the key names ada's request, not grace's.
    assert expect_error_info(error, grpc.StatusCode.ALREADY_EXISTS).reason == (
        "IDEMPOTENCY_KEY_REUSED"
    )


# --- payments ----------------------------------------------------------------------------


async def test_someone_elses_payment_is_not_found_exactly_like_an_unknown_id(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    order = await place(shop, ada)
    unknown = new_payment_id()

    def get(payment_id: str, caller: str) -> Awaitable[Any]:
        return shop.payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=as_user(caller)
        )

    own = await get(order.payment_id, ada)
    assert own.payment.order_id == order.order_id
    theirs = await refused(get(order.payment_id, grace))
    assert expect_error_info(theirs, grpc.StatusCode.NOT_FOUND).reason == "PAYMENT_NOT_FOUND"
    assert refusal(theirs, order.payment_id) == refusal(await refused(get(unknown, grace)), unknown)


async def test_a_payment_from_before_owners_is_readable_by_nobody(
    services: ServiceRunner, channels: Channels
) -> None:
    version_1 = Migrations(sqlite=[SCHEMA_V1], postgres=[POSTGRES_SCHEMA_V1])
    old = await Database.open(services.config("payments").database, version_1)
    payment_id, unknown = new_payment_id(), new_payment_id()

    def old_payment(db: Connection) -> None:
        db.execute(
            "INSERT INTO payments VALUES (?, 'ord_1', 'USD', 1299, 'CAPTURED', 0, 0)", (payment_id,)
        )

    await old.write(old_payment)
    await old.close()
    running = await services.start("payments", build_payments)
    stub = payments_pb2_grpc.PaymentsServiceStub(channels(running.address))

    def get(payment_id: str) -> Awaitable[Any]:
        return stub.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), metadata=as_user("usr_1")
        )

    assert refusal(await refused(get(payment_id)), payment_id) == refusal(
        await refused(get(unknown)), unknown
    )


# --- notifications -----------------------------------------------------------------------


async def test_notifications_of_another_user_are_permission_denied(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    await place(shop, ada)
    await eventually(lambda: shop.notifications_of(ada), lambda notes: len(notes) == 1)

    listed = await refused(
        shop.notifications.ListNotifications(
            notifications_pb2.ListNotificationsRequest(user_id=ada), metadata=as_user(grace)
        )
    )
    watched = await watch_refusal(
        shop, notifications_pb2.WatchNotificationsRequest(user_id=ada), as_user(grace)
    )

    for error in (listed, watched):
        info = expect_error_info(error, grpc.StatusCode.PERMISSION_DENIED)
        assert (info.reason, dict(info.metadata)) == (NOT_YOUR_DATA, {"field": "user_id"})
    own = await shop.notifications.ListNotifications(
        notifications_pb2.ListNotificationsRequest(), metadata=as_user(ada)
    )
    assert [note.user_id for note in own.notifications] == [ada]


# --- users -------------------------------------------------------------------------------


async def test_someone_elses_account_is_not_found_exactly_like_an_unknown_id(shop: Shop) -> None:
    ada, grace = await shop.new_user(), await shop.new_user()
    unknown = new_user_id()

    def get(user_id: str) -> Awaitable[Any]:
        return shop.users.GetUser(users_pb2.GetUserRequest(user_id=user_id), metadata=as_user(ada))

    own = await get(ada)
    assert own.user.user_id == ada
    theirs = await refused(get(grace))
    assert expect_error_info(theirs, grpc.StatusCode.NOT_FOUND).reason == "USER_NOT_FOUND"
    assert refusal(theirs, grace) == refusal(await refused(get(unknown)), unknown)


# --- orders passes the shopper on --------------------------------------------------------


async def test_every_call_orders_makes_for_an_order_names_its_shopper(
    services: ServiceRunner, channels: Channels, fast_orders: None
) -> None:
    log = CallerLog()
    shop = await start_shop(
        services, channels, replace={name: log.wrap(BUILDS[name]) for name in UPSTREAMS}
    )
    ada = await shop.new_user()
    log.calls.clear()  # CreateUser, the test's own call

    order = await place(shop, ada)
    await shop.orders.CancelOrder(
        orders_pb2.CancelOrderRequest(order_id=order.order_id), metadata=as_user(ada)
    )
    await eventually(lambda: shop.notifications_of(ada), lambda notes: len(notes) == 2)

    methods = {method for method, _ in log.calls}
    assert methods >= {
        "GetUser",
        "ReserveStock",
        "Charge",
        "CommitReservation",
        "Refund",
        "ReleaseStock",
        "PublishOrderEvents",
    }
    # The reservation prices the order: orders reads no product (and is granted no GetProduct).
    assert "GetProduct" not in methods
    assert [call for call in log.calls if call[1] != ada] == []


async def test_the_relay_names_the_shopper_of_a_batch_and_nobody_for_a_mixed_one(
    services: ServiceRunner, channels: Channels, fast_orders: None
) -> None:
    log = CallerLog()
    wrapped = log.wrap(BUILDS["notifications"])
    shop = await start_shop(services, channels, replace={"notifications": wrapped})
    ada, grace = await shop.new_user(), await shop.new_user()
    await shop.services.stop(shop.running["notifications"])
    await place(shop, ada, "k-1")
    await place(shop, grace, "k-2")

    # Both events wait in the outbox and go out in one batch of two shoppers.
    await shop.services.start("notifications", wrapped)
    await eventually(lambda: shop.notifications_of(grace), lambda notes: len(notes) == 1)
    await place(shop, ada, "k-3")
    await eventually(lambda: shop.notifications_of(ada), lambda notes: len(notes) == 2)

    published = [caller for method, caller in log.calls if method == "PublishOrderEvents"]
    assert published == [None, ada]
