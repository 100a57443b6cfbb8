"""InventoryService over real gRPC: an in-process server on a temporary Unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from services.common.errors import FieldViolation
from services.common.server import RunningService
from services.common.status import field_violations, precondition_violations
from services.inventory.app import build
from services.inventory.catalog import seed_catalog
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.inventory.v1.inventory_pb2 import ReservationItem
from shopmesh.local.health import health_check
from tests.support.calls import RELEASED_NOTHING, answered, release_nothing, summary, timed
from tests.support.databases import ON_BOTH_BACKENDS
from tests.support.db_locks import WriteWatch, serves_while_a_write_waits
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner
from tests.support.shop import usd

pytestmark = ON_BOTH_BACKENDS

if TYPE_CHECKING:
    from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceAsyncStub

HELD = inventory_pb2.RESERVATION_STATUS_HELD
COMMITTED = inventory_pb2.RESERVATION_STATUS_COMMITTED
RELEASED = inventory_pb2.RESERVATION_STATUS_RELEASED


@pytest.fixture
async def server(services: ServiceRunner) -> RunningService:
    return await services.start("inventory", build)


@pytest.fixture
def inventory(
    server: RunningService, channels: Callable[[str], aio.Channel]
) -> InventoryServiceAsyncStub:
    return inventory_pb2_grpc.InventoryServiceStub(channels(server.address))


async def available(inventory: InventoryServiceAsyncStub, sku: str) -> int:
    response = await inventory.GetProduct(inventory_pb2.GetProductRequest(sku=sku))
    return response.product.available_quantity


async def reserve(
    inventory: InventoryServiceAsyncStub, order_id: str, *items: tuple[str, int]
) -> inventory_pb2.Reservation:
    response = await inventory.ReserveStock(
        inventory_pb2.ReserveStockRequest(
            order_id=order_id, items=[ReservationItem(sku=s, quantity=q) for s, q in items]
        )
    )
    return response.reservation


async def failure(call: Awaitable[object]) -> aio.AioRpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return raised.value


# --- catalog -------------------------------------------------------------------------------------


async def test_list_products_walks_every_page_in_sku_order(
    inventory: InventoryServiceAsyncStub,
) -> None:
    skus: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await inventory.ListProducts(
            inventory_pb2.ListProductsRequest(page_size=3, page_token=token)
        )
        assert len(page.products) <= 3
        skus.extend(product.sku for product in page.products)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert skus == sorted(product.sku for product in seed_catalog())
    assert pages == 3


async def test_list_products_refuses_a_forged_page_token(
    inventory: InventoryServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await inventory.ListProducts(inventory_pb2.ListProductsRequest(page_token="garbage"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == ["page_token"]


async def test_get_product_returns_price_and_available_stock(
    inventory: InventoryServiceAsyncStub,
) -> None:
    response = await inventory.GetProduct(inventory_pb2.GetProductRequest(sku="MUG-01"))
    product = response.product
    assert (product.sku, product.price.currency_code, product.price.minor_units) == (
        "MUG-01",
        "USD",
        1299,
    )
    assert product.available_quantity == 100


async def test_get_unknown_product_is_not_found(inventory: InventoryServiceAsyncStub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await inventory.GetProduct(inventory_pb2.GetProductRequest(sku="NOPE-01"))
    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert (info.reason, dict(info.metadata)) == ("PRODUCT_NOT_FOUND", {"skus": "NOPE-01"})


# --- reservations --------------------------------------------------------------------------------


async def test_repeated_reserve_makes_one_reservation(inventory: InventoryServiceAsyncStub) -> None:
    first = await reserve(inventory, "ord_1", ("MUG-01", 2), ("TSHIRT-01", 1))
    again = await reserve(inventory, "ord_1", ("TSHIRT-01", 1), ("MUG-01", 2))
    assert again == first
    assert first.status == HELD
    assert [(i.sku, i.quantity) for i in first.items] == [("MUG-01", 2), ("TSHIRT-01", 1)]
    assert first.create_time.ToDatetime() == first.update_time.ToDatetime()
    assert await available(inventory, "MUG-01") == 98
    assert await available(inventory, "TSHIRT-01") == 49


async def test_reservation_prices_every_item_at_its_products_price(
    inventory: InventoryServiceAsyncStub,
) -> None:
    held = await reserve(inventory, "ord_1", ("TSHIRT-01", 1), ("MUG-01", 2))
    again = await reserve(inventory, "ord_1", ("MUG-01", 2), ("TSHIRT-01", 1))
    fetched = await inventory.GetReservation(inventory_pb2.GetReservationRequest(order_id="ord_1"))

    prices = [(i.sku, i.unit_price.currency_code, i.unit_price.minor_units) for i in held.items]
    assert prices == [("TSHIRT-01", "USD", 2499), ("MUG-01", "USD", 1299)]
    assert all(i.HasField("unit_price") for i in held.items)
    assert again.items == held.items
    assert fetched.reservation.items == held.items


async def test_unit_prices_in_a_reserve_request_are_ignored(
    inventory: InventoryServiceAsyncStub,
) -> None:
    request = inventory_pb2.ReserveStockRequest(
        order_id="ord_1",
        items=[ReservationItem(sku="MUG-01", quantity=1, unit_price=usd(1))],
    )
    held = (await inventory.ReserveStock(request)).reservation
    assert held.items[0].unit_price == usd(1299)


async def test_reserve_with_reused_order_id_is_already_exists(
    inventory: InventoryServiceAsyncStub,
) -> None:
    await reserve(inventory, "ord_1", ("MUG-01", 2))
    with pytest.raises(aio.AioRpcError) as raised:
        await reserve(inventory, "ord_1", ("MUG-01", 3))
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await available(inventory, "MUG-01") == 98


async def test_shortage_is_failed_precondition_naming_short_items(
    inventory: InventoryServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await reserve(inventory, "ord_1", ("MUG-01", 1), ("POSTER-LTD", 2), ("TSHIRT-01", 51))
    info = expect_error_info(raised.value, grpc.StatusCode.FAILED_PRECONDITION)
    assert (info.reason, dict(info.metadata)) == (
        "INSUFFICIENT_STOCK",
        {"skus": "POSTER-LTD,TSHIRT-01"},
    )
    assert [(v.type, v.subject, v.description) for v in precondition_violations(raised.value)] == [
        ("STOCK", "sku:POSTER-LTD", "requested 2, available 1"),
        ("STOCK", "sku:TSHIRT-01", "requested 51, available 50"),
    ]
    # All or nothing: the item that was in stock is not held either.
    assert await available(inventory, "MUG-01") == 100


async def test_reserve_of_unknown_product_is_not_found(
    inventory: InventoryServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await reserve(inventory, "ord_1", ("MUG-01", 1), ("NOPE-01", 1))
    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert (info.reason, dict(info.metadata)) == ("PRODUCT_NOT_FOUND", {"skus": "NOPE-01"})


async def test_concurrent_orders_for_the_last_unit_get_it_once(
    inventory: InventoryServiceAsyncStub,
) -> None:
    outcomes = await asyncio.gather(
        *(reserve(inventory, f"ord_{n}", ("POSTER-LTD", 1)) for n in range(8)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, inventory_pb2.Reservation)]
    lost = [o for o in outcomes if isinstance(o, aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 7)
    assert {error.code() for error in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert await available(inventory, "POSTER-LTD") == 0


async def test_release_returns_held_stock(inventory: InventoryServiceAsyncStub) -> None:
    await reserve(inventory, "ord_1", ("TSHIRT-01", 5))
    request = inventory_pb2.ReleaseStockRequest(order_id="ord_1")
    released = (await inventory.ReleaseStock(request)).reservation
    assert (await inventory.ReleaseStock(request)).reservation == released
    assert released.status == RELEASED
    assert await available(inventory, "TSHIRT-01") == 50


async def test_commit_then_release_returns_stock(inventory: InventoryServiceAsyncStub) -> None:
    await reserve(inventory, "ord_1", ("TSHIRT-01", 5))
    commit = inventory_pb2.CommitReservationRequest(order_id="ord_1")
    committed = (await inventory.CommitReservation(commit)).reservation
    assert (await inventory.CommitReservation(commit)).reservation == committed
    assert committed.status == COMMITTED
    assert await available(inventory, "TSHIRT-01") == 45

    released = await inventory.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="ord_1"))
    assert released.reservation.status == RELEASED
    assert await available(inventory, "TSHIRT-01") == 50


async def test_commit_after_release_is_refused(inventory: InventoryServiceAsyncStub) -> None:
    await reserve(inventory, "ord_1", ("MUG-01", 1))
    await inventory.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="ord_1"))
    with pytest.raises(aio.AioRpcError) as raised:
        await inventory.CommitReservation(inventory_pb2.CommitReservationRequest(order_id="ord_1"))
    info = expect_error_info(raised.value, grpc.StatusCode.FAILED_PRECONDITION)
    assert info.reason == "RESERVATION_RELEASED"


async def test_release_of_unknown_order_is_not_found(inventory: InventoryServiceAsyncStub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await inventory.ReleaseStock(inventory_pb2.ReleaseStockRequest(order_id="ord_missing"))
    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert info.reason == "RESERVATION_NOT_FOUND"


async def test_get_reservation_returns_its_current_state(
    inventory: InventoryServiceAsyncStub,
) -> None:
    await reserve(inventory, "ord_1", ("MUG-01", 1))
    await inventory.CommitReservation(inventory_pb2.CommitReservationRequest(order_id="ord_1"))
    response = await inventory.GetReservation(inventory_pb2.GetReservationRequest(order_id="ord_1"))
    assert response.reservation.status == COMMITTED


async def test_bad_reservation_lists_every_field_violation(
    inventory: InventoryServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await reserve(inventory, "", ("", 1), ("MUG-01", 0), ("MUG-01", 1))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [
        FieldViolation("order_id", "must not be empty"),
        FieldViolation("items[0].sku", "must not be empty"),
        FieldViolation("items[1].quantity", "must be > 0"),
        FieldViolation("items[2].sku", "duplicates items[1].sku; merge them"),
    ]


async def test_reservation_without_items_is_invalid(inventory: InventoryServiceAsyncStub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await reserve(inventory, "ord_1")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == ["items"]


async def test_empty_ids_are_invalid(inventory: InventoryServiceAsyncStub) -> None:
    calls: list[Awaitable[object]] = [
        inventory.GetProduct(inventory_pb2.GetProductRequest()),
        inventory.CommitReservation(inventory_pb2.CommitReservationRequest()),
        inventory.ReleaseStock(inventory_pb2.ReleaseStockRequest()),
        inventory.GetReservation(inventory_pb2.GetReservationRequest()),
    ]
    errors = await asyncio.gather(*(failure(call) for call in calls))
    assert [(e.code(), [v.field for v in field_violations(e)]) for e in errors] == [
        (grpc.StatusCode.INVALID_ARGUMENT, ["sku"]),
        (grpc.StatusCode.INVALID_ARGUMENT, ["order_id"]),
        (grpc.StatusCode.INVALID_ARGUMENT, ["order_id"]),
        (grpc.StatusCode.INVALID_ARGUMENT, ["order_id"]),
    ]


async def test_release_naming_no_order_is_answered_without_touching_the_database(
    server: RunningService,
    channels: Callable[[str], aio.Channel],
    services: ServiceRunner,
    database_writes: WriteWatch,
) -> None:
    # What the mesh tests that play the orders app send inventory (tests.support.calls).
    outcome = await timed(release_nothing(channels(server.address)))

    assert summary([outcome]) == {RELEASED_NOTHING: 1}
    assert answered(outcome)
    assert database_writes.calls(services.config("inventory").database) == 0


# --- lifecycle -----------------------------------------------------------------------------------


async def test_stock_and_reservations_survive_a_restart(
    services: ServiceRunner, channels: Callable[[str], aio.Channel]
) -> None:
    first = await services.start("inventory", build)
    before = inventory_pb2_grpc.InventoryServiceStub(channels(first.address))
    held = await reserve(before, "ord_1", ("MUG-01", 4))
    await services.stop(first)

    second = await services.start("inventory", build)
    after = inventory_pb2_grpc.InventoryServiceStub(channels(second.address))
    response = await after.GetReservation(inventory_pb2.GetReservationRequest(order_id="ord_1"))
    assert response.reservation == held
    assert await available(after, "MUG-01") == 96


async def test_reflection_lists_the_inventory_service(
    server: RunningService, channels: Callable[[str], aio.Channel]
) -> None:
    # Called by method path: the grpcio-reflection stub is untyped for aio channels.
    list_services = channels(server.address).stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = list_services(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = [
        service.name
        async for response in call
        for service in response.list_services_response.service
    ]
    assert "shop.inventory.v1.InventoryService" in names
    assert "grpc.health.v1.Health" in names


@pytest.mark.parametrize("service", ["", "shop.inventory.v1.InventoryService"])
async def test_health_is_serving(
    server: RunningService, channels: Callable[[str], aio.Channel], service: str
) -> None:
    check = health_check(channels(server.address))
    response = await check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_get_product_and_health_answer_while_a_reservation_waits_for_the_database_lock(
    services: ServiceRunner,
    server: RunningService,
    channels: Callable[[str], aio.Channel],
    database_writes: WriteWatch,
) -> None:
    channel = channels(server.address)
    inventory = inventory_pb2_grpc.InventoryServiceStub(channel)

    held = await serves_while_a_write_waits(
        db_path=services.config("inventory").database,
        channel=channel,
        writes=database_writes,
        read=lambda: inventory.GetProduct(inventory_pb2.GetProductRequest(sku="MUG-01")),
        write=lambda: reserve(inventory, "ord_1", ("MUG-01", 2)),
    )

    assert held.status == HELD
    assert await available(inventory, "MUG-01") == 98
