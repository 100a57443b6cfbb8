"""OrdersService reads beside checkout, with all five services in this process: cursor paging
of ListOrders, and reads that keep answering while a write waits for the database lock."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from services.common.errors import FieldViolation
from services.common.status import field_violations
from shop.inventory.v1 import inventory_pb2
from shop.orders.v1 import orders_pb2
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS, count_rows
from tests.support.db_locks import WriteWatch, serves_while_a_write_waits
from tests.support.shop import Channels, Shop, as_async, eventually, place_request

pytestmark = ON_BOTH_BACKENDS

STICKER = (("STICKER-01", 1),)
PENDING_EVENTS = "SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'"


async def list_orders(
    shop: Shop, user_id: str, page_size: int, page_token: str = ""
) -> orders_pb2.ListOrdersResponse:
    return await shop.orders.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=user_id, page_size=page_size, page_token=page_token),
        metadata=as_user(user_id),
    )


async def test_list_orders_pages_do_not_shift_when_new_orders_arrive(shop: Shop) -> None:
    user_id = await shop.new_user()
    placed = [
        (
            await shop.orders.PlaceOrder(
                place_request(user_id, f"old-{n}", STICKER), metadata=as_user(user_id)
            )
        ).order
        for n in range(5)
    ]
    first = await list_orders(shop, user_id, page_size=2)
    for n in range(3):
        await shop.orders.PlaceOrder(
            place_request(user_id, f"new-{n}", STICKER), metadata=as_user(user_id)
        )

    rest: list[orders_pb2.Order] = []
    token = first.next_page_token
    while token:
        page = await list_orders(shop, user_id, page_size=2, page_token=token)
        rest.extend(page.orders)
        token = page.next_page_token

    newest_first = [order.order_id for order in reversed(placed)]
    assert [order.order_id for order in first.orders] == newest_first[:2]
    assert [order.order_id for order in rest] == newest_first[2:]


async def test_list_orders_refuses_a_token_of_another_list_rpc(shop: Shop) -> None:
    products = await shop.inventory.ListProducts(inventory_pb2.ListProductsRequest(page_size=1))

    with pytest.raises(aio.AioRpcError) as raised:
        await list_orders(shop, "usr_1", page_size=1, page_token=products.next_page_token)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == "page_token is not one this service issued"
    assert field_violations(raised.value) == [
        FieldViolation("page_token", "pass back a next_page_token unchanged")
    ]


async def test_get_order_and_health_answer_while_an_order_waits_for_the_database_lock(
    shop: Shop, channels: Channels, database_writes: WriteWatch
) -> None:
    user_id = await shop.new_user()
    first = await shop.orders.PlaceOrder(
        place_request(user_id, "k-1", STICKER), metadata=as_user(user_id)
    )
    orders_db = shop.db_path("orders")
    # Once the relay has delivered the first order's event it only reads, so the next write to
    # the orders database is the one of the order placed below.
    await eventually(
        lambda: as_async(count_rows, orders_db, PENDING_EVENTS), lambda pending: pending == 0
    )
    get_first = orders_pb2.GetOrderRequest(order_id=first.order.order_id)

    second = await serves_while_a_write_waits(
        db_path=orders_db,
        channel=channels(shop.running["orders"].address),
        writes=database_writes,
        read=lambda: shop.orders.GetOrder(get_first, metadata=as_user(user_id)),
        write=lambda: shop.orders.PlaceOrder(
            place_request(user_id, "k-2", STICKER), metadata=as_user(user_id)
        ),
    )

    assert second.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    listed = await list_orders(shop, user_id, page_size=10)
    assert [o.order_id for o in listed.orders] == [second.order.order_id, first.order.order_id]
