"""The orders service (`Orders`): cancellation through the saga, request validation, reads and
paging, on the saga's test world (tests.support.orders_world)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
)
from services.orders.domain import Order, OrderStatus, SagaStep, validate_place_order
from tests.support.orders_fakes import Crash, unavailable
from tests.support.orders_world import USER, World, request, reservation_status

# --- cancellation ------------------------------------------------------------------------


async def test_cancel_refunds_releases_and_cancels(world: World) -> None:
    placed = await world.saga.place_order(request())

    order = await world.orders.cancel_order(USER, placed.order_id, "changed my mind")

    assert order.status is OrderStatus.CANCELLED
    assert order.cancel_reason == "changed my mind"
    assert order.payment_id == "pay_1"
    assert world.payments.payments == {"pay_1": "REFUNDED"}
    assert reservation_status(world, placed.order_id) == "RELEASED"
    assert world.inventory.available["MUG-01"] == 100
    assert await world.events() == [
        (placed.order_id, "CONFIRMED", ""),
        (placed.order_id, "CANCELLED", "changed my mind"),
    ]


async def test_cancelling_twice_returns_the_cancelled_order_without_a_second_refund(
    world: World,
) -> None:
    placed = await world.saga.place_order(request())
    first = await world.orders.cancel_order(USER, placed.order_id, "")

    second = await world.orders.cancel_order(USER, placed.order_id, "again")

    assert second == first
    assert world.payments.calls["refund"] == 1
    assert [e[1] for e in await world.events()] == ["CONFIRMED", "CANCELLED"]


async def test_cancelling_a_rejected_order_is_failed_precondition(world: World) -> None:
    placed = await world.saga.place_order(request(token="tok_chargeDeclined"))

    with pytest.raises(FailedPrecondition) as raised:
        await world.orders.cancel_order(USER, placed.order_id, "")

    assert raised.value.reason == "ORDER_NOT_CANCELLABLE"
    assert raised.value.metadata == {"order_id": placed.order_id, "status": "REJECTED"}
    assert raised.value.violations == [
        PreconditionViolation(
            "ORDER_STATUS", f"order:{placed.order_id}", "order is REJECTED, not CONFIRMED"
        )
    ]


async def test_cancelling_a_pending_order_is_failed_precondition(world: World) -> None:
    world.payments.fail("charge", unavailable("payments"))
    with pytest.raises(Unavailable) as pending:
        await world.saga.place_order(request())

    with pytest.raises(FailedPrecondition) as raised:
        await world.orders.cancel_order(USER, pending.value.metadata["order_id"], "")

    assert raised.value.reason == "ORDER_NOT_CANCELLABLE"
    assert raised.value.metadata["status"] == "PENDING"


async def test_cancelling_an_unknown_order_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as raised:
        await world.orders.cancel_order(USER, "ord_nope", "")

    assert raised.value.reason == "ORDER_NOT_FOUND"
    assert raised.value.metadata == {"order_id": "ord_nope"}


async def test_crash_mid_cancel_is_finished_on_restart(world: World) -> None:
    placed = await world.saga.place_order(request())
    world.payments.fail("refund", Crash(), after=True)
    with pytest.raises(Crash):
        await world.orders.cancel_order(USER, placed.order_id, "too slow")
    assert await world.saga_step(placed.order_id) is SagaStep.REFUND_PAYMENT

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, placed.order_id)
    assert order.status is OrderStatus.CANCELLED
    assert world.payments.effects == {"charge": 1, "refund": 1}
    assert world.inventory.effects["release"] == 1
    assert [e[1:] for e in await world.events()] == [("CONFIRMED", ""), ("CANCELLED", "too slow")]


async def test_cancel_with_payments_down_is_pending_and_finished_later(world: World) -> None:
    placed = await world.saga.place_order(request())
    world.payments.fail("refund", unavailable("payments"))

    with pytest.raises(Unavailable) as raised:
        await world.orders.cancel_order(USER, placed.order_id, "")
    assert raised.value.reason == "CANCELLATION_PENDING"
    assert raised.value.metadata == {"order_id": placed.order_id, "step": "REFUND_PAYMENT"}
    assert (await world.orders.get_order(USER, placed.order_id)).status is OrderStatus.CONFIRMED

    await world.saga.recover()

    assert (await world.orders.get_order(USER, placed.order_id)).status is OrderStatus.CANCELLED


# --- validation and reads ----------------------------------------------------------------


def test_place_order_validation_lists_every_bad_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_place_order("", " ", [("MUG-01", 0), ("", 1), ("MUG-01", 1001)], "", "usd")

    assert raised.value.violations == [
        FieldViolation("idempotency_key", "must not be empty"),
        FieldViolation("user_id", "must not be empty"),
        FieldViolation("payment_token", "must not be empty"),
        FieldViolation("items[0].quantity", "must be between 1 and 1000"),
        FieldViolation("items[1].sku", "must not be empty"),
        FieldViolation("items[2].sku", "repeats SKU 'MUG-01'"),
        FieldViolation("items[2].quantity", "must be between 1 and 1000"),
        FieldViolation("currency_code", "must be three upper-case letters, e.g. USD"),
    ]


def test_place_order_without_items_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_place_order("k", "u", [], "tok_visa", "")

    assert raised.value.violations == [FieldViolation("items", "must contain at least one item")]


def test_too_long_idempotency_key_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_place_order("k" * 256, "u", [("MUG-01", 1)], "tok_visa", "")

    assert raised.value.violations == [
        FieldViolation("idempotency_key", "must be at most 255 characters")
    ]


def test_empty_currency_means_usd() -> None:
    assert validate_place_order("k", "u", [("MUG-01", 1)], "tok_visa", "").currency_code == "USD"


def test_fingerprint_ignores_the_key_but_not_the_token() -> None:
    a = validate_place_order("k1", "u", [("MUG-01", 1)], "tok_visa", "")
    b = validate_place_order("k2", "u", [("MUG-01", 1)], "tok_visa", "")
    c = validate_place_order("k1", "u", [("MUG-01", 1)], "tok_mastercard", "")

    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


async def test_cancel_with_too_long_reason_is_invalid(world: World) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await world.orders.cancel_order(USER, "", "x" * 501)

    assert raised.value.violations == [
        FieldViolation("order_id", "must not be empty"),
        FieldViolation("reason", "must be at most 500 characters"),
    ]


async def test_getting_an_unknown_order_is_not_found(world: World) -> None:
    with pytest.raises(NotFound) as raised:
        await world.orders.get_order(USER, "ord_nope")

    assert raised.value.reason == "ORDER_NOT_FOUND"


async def test_list_orders_pages_newest_first(world: World) -> None:
    placed: list[Order] = []
    for n in range(3):
        placed.append(await world.saga.place_order(request(key=f"k{n}", items=(("MUG-01", 1),))))
        world.clock.advance(timedelta(seconds=1))

    first = await world.orders.list_orders(USER, USER, 2, "")
    second = await world.orders.list_orders(USER, USER, 2, first.next_page_token)

    assert [o.order_id for o in first.orders + second.orders] == [
        o.order_id for o in reversed(placed)
    ]
    assert first.next_page_token != ""
    assert second.next_page_token == ""


async def test_list_orders_pages_do_not_shift_when_orders_arrive_between_them(
    world: World,
) -> None:
    older = [
        await world.saga.place_order(request(key=f"old-{n}", items=(("MUG-01", 1),)))
        for n in range(4)
    ]
    first = await world.orders.list_orders(USER, USER, 2, "")
    for n in range(2):
        world.clock.advance(timedelta(seconds=1))
        await world.saga.place_order(request(key=f"new-{n}", items=(("MUG-01", 1),)))

    second = await world.orders.list_orders(USER, USER, 2, first.next_page_token)

    # All four orders share one create time: the order id breaks the tie, newest-first.
    expected = sorted((o.order_id for o in older), reverse=True)
    assert [o.order_id for o in first.orders + second.orders] == expected
    assert second.next_page_token == ""


async def test_list_orders_refuses_a_tampered_page_token(world: World) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await world.orders.list_orders(USER, USER, 2, "b3JkZXJz")

    assert raised.value.message == "page_token is not one this service issued"
    assert raised.value.violations == [
        FieldViolation("page_token", "pass back a next_page_token unchanged")
    ]


async def test_list_orders_validation_lists_every_bad_field(world: World) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await world.orders.list_orders(USER, "", -1, "")

    # An empty user_id means the caller: only the page size is wrong.
    assert raised.value.violations == [FieldViolation("page_size", "must be >= 0")]
