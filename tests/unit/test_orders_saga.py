"""The checkout saga against in-memory fakes of users, inventory and payments, with the real
SQLite store (so a "crash" can be followed by reopening the same file and recovering)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, Unavailable
from services.common.money import Money
from services.orders.domain import (
    Order,
    OrderEventType,
    OrderStatus,
    SagaState,
    SagaStep,
    charge_key,
    new_order_id,
)
from tests.support.orders_fakes import Crash, unavailable
from tests.support.orders_world import USER, World, request, reservation_status

# --- happy path --------------------------------------------------------------------------


async def test_successful_checkout_confirms_the_order(world: World) -> None:
    order = await world.saga.place_order(request())

    assert order.status is OrderStatus.CONFIRMED
    assert order.total == Money("USD", 2 * 1299 + 2499)
    assert [item.unit_price for item in order.items] == [Money("USD", 1299), Money("USD", 2499)]
    assert order.payment_id == "pay_1"
    assert order.rejection_reason == ""


async def test_successful_checkout_commits_stock_and_charges_the_total_once(world: World) -> None:
    order = await world.saga.place_order(request())

    assert reservation_status(world, order.order_id) == "COMMITTED"
    assert world.inventory.available == {"MUG-01": 98, "TSHIRT-01": 49, "POSTER-LTD": 1}
    assert world.payments.effects["charge"] == 1
    assert world.payments.amounts["pay_1"] == Money("USD", 5097)
    assert world.payments.charges == {charge_key(order.order_id): "pay_1"}


async def test_successful_checkout_writes_one_confirmed_event(world: World) -> None:
    order = await world.saga.place_order(request())

    assert await world.events() == [(order.order_id, "CONFIRMED", "")]
    assert world.wakeups == 1
    [event] = await world.store.pending_events(10)
    assert event.event_id == f"{order.order_id}:confirmed"
    assert event.user_id == USER
    assert event.total == Money("USD", 5097)


async def test_finished_saga_forgets_the_payment_token(world: World) -> None:
    order = await world.saga.place_order(request())

    loaded = await world.store.load(order.order_id)
    assert loaded is not None
    assert loaded[1].step is SagaStep.DONE
    assert loaded[1].payment_token == ""


async def test_order_is_stored_and_readable(world: World) -> None:
    order = await world.saga.place_order(request())

    assert await world.orders.get_order(USER, order.order_id) == order


# --- rejections --------------------------------------------------------------------------


async def test_declined_card_releases_stock_and_rejects(world: World) -> None:
    order = await world.saga.place_order(request(token="tok_chargeDeclined"))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "CARD_DECLINED"
    assert order.payment_id == ""
    assert reservation_status(world, order.order_id) == "RELEASED"
    assert world.inventory.available["MUG-01"] == 100
    assert world.payments.effects["charge"] == 0
    assert await world.events() == [(order.order_id, "REJECTED", "CARD_DECLINED")]


async def test_unknown_payment_token_releases_stock_and_rejects(world: World) -> None:
    order = await world.saga.place_order(request(token="tok_bogus"))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "PAYMENT_TOKEN_INVALID"
    assert reservation_status(world, order.order_id) == "RELEASED"


async def test_short_stock_rejects_without_charging(world: World) -> None:
    order = await world.saga.place_order(request(items=(("POSTER-LTD", 2),)))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "INSUFFICIENT_STOCK"
    assert world.inventory.available["POSTER-LTD"] == 1
    assert world.payments.calls["charge"] == 0
    assert await world.events() == [(order.order_id, "REJECTED", "INSUFFICIENT_STOCK")]


async def test_unknown_user_rejects_without_touching_inventory(world: World) -> None:
    order = await world.saga.place_order(request(user="usr_nobody"))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "USER_NOT_FOUND"
    assert sum(world.inventory.calls.values()) == 0
    assert await world.events() == [(order.order_id, "REJECTED", "USER_NOT_FOUND")]


async def test_unknown_product_rejects_and_holds_nothing(world: World) -> None:
    order = await world.saga.place_order(request(items=(("MUG-01", 1), ("NOPE-1", 1))))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "PRODUCT_NOT_FOUND"
    assert order.total is None
    # The reservation refused the unknown SKU, all or nothing: nothing to release.
    assert world.inventory.effects == {}
    assert world.inventory.calls == {"reserve": 1}
    assert world.inventory.available["MUG-01"] == 100


async def test_product_priced_in_another_currency_rejects_and_releases_the_stock(
    world: World,
) -> None:
    order = await world.saga.place_order(request(currency="EUR"))

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "CURRENCY_MISMATCH"
    assert order.total is None
    assert [item.unit_price for item in order.items] == [None, None]
    # The prices came with the reservation, so the stock was held first: it is back.
    assert world.inventory.effects == {"reserve": 1, "release": 1}
    assert reservation_status(world, order.order_id) == "RELEASED"
    assert world.inventory.available == {"MUG-01": 100, "TSHIRT-01": 50, "POSTER-LTD": 1}
    assert world.payments.calls["charge"] == 0
    assert await world.events() == [(order.order_id, "REJECTED", "CURRENCY_MISMATCH")]


async def test_one_product_in_another_currency_rejects_the_whole_order(world: World) -> None:
    world.inventory.add("EURO-MUG", 1099, 10, currency="EUR")

    order = await world.saga.place_order(request(items=(("MUG-01", 1), ("EURO-MUG", 1))))

    assert order.rejection_reason == "CURRENCY_MISMATCH"
    assert world.inventory.available["MUG-01"] == 100
    assert world.inventory.available["EURO-MUG"] == 10


async def test_crash_before_the_currency_mismatch_is_stored_still_releases_the_stock(
    world: World,
) -> None:
    order_id = await world.crash_placing(world.inventory, "reserve", request(currency="EUR"))

    saga = await world.restart()
    assert await saga.recover() == 1

    order = await world.orders.get_order(USER, order_id)
    assert (order.status, order.rejection_reason) == (OrderStatus.REJECTED, "CURRENCY_MISMATCH")
    assert world.inventory.effects == {"reserve": 1, "release": 1}
    assert world.inventory.available["MUG-01"] == 100


async def test_shortage_is_reported_before_a_currency_mismatch(world: World) -> None:
    # Both apply; the reservation is refused before any price is seen, as it holds nothing.
    order = await world.saga.place_order(request(items=(("POSTER-LTD", 2),), currency="EUR"))

    assert order.rejection_reason == "INSUFFICIENT_STOCK"
    assert world.inventory.effects == {}


async def test_checkout_prices_from_the_reservation_in_one_inventory_call(world: World) -> None:
    order = await world.saga.place_order(request())

    # No GetProduct per item: the reservation's answer priced the order.
    assert world.inventory.calls == {"reserve": 1, "commit": 1}
    assert order.total == Money("USD", 2 * 1299 + 2499)


async def test_a_retried_reservation_keeps_the_prices_it_was_made_at(world: World) -> None:
    world.inventory.fail("reserve", unavailable("inventory"), after=True)
    with pytest.raises(Unavailable) as raised:
        await world.saga.place_order(request())
    world.inventory.prices["MUG-01"] = Money("USD", 1499)

    order = await world.saga.place_order(request())

    assert order.order_id == raised.value.metadata["order_id"]
    assert order.total == Money("USD", 2 * 1299 + 2499)
    assert world.payments.amounts["pay_1"] == Money("USD", 5097)


async def test_released_reservation_at_commit_refunds_and_rejects(world: World) -> None:
    world.inventory.fail("commit", FailedPrecondition("gone", reason="RESERVATION_RELEASED"))

    order = await world.saga.place_order(request())

    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "RESERVATION_RELEASED"
    assert world.payments.payments == {"pay_1": "REFUNDED"}
    assert reservation_status(world, order.order_id) == "RELEASED"


async def test_free_order_is_confirmed_without_a_charge(world: World) -> None:
    world.inventory.add("FREEBIE", 0, 10)

    order = await world.saga.place_order(request(items=(("FREEBIE", 1),)))

    assert order.status is OrderStatus.CONFIRMED
    assert order.payment_id == ""
    assert world.payments.calls["charge"] == 0


# --- idempotency -------------------------------------------------------------------------


async def test_same_key_returns_the_same_order_without_a_second_charge(world: World) -> None:
    first = await world.saga.place_order(request())
    second = await world.saga.place_order(request())

    assert second == first
    assert world.payments.calls["charge"] == 1
    assert len(await world.events()) == 1


async def test_same_key_with_items_listed_in_another_order_is_the_same_request(
    world: World,
) -> None:
    first = await world.saga.place_order(request(items=(("MUG-01", 1), ("TSHIRT-01", 1))))
    second = await world.saga.place_order(request(items=(("TSHIRT-01", 1), ("MUG-01", 1))))

    assert second.order_id == first.order_id


async def test_same_key_with_different_items_is_already_exists(world: World) -> None:
    first = await world.saga.place_order(request())

    with pytest.raises(AlreadyExists) as raised:
        await world.saga.place_order(request(items=(("MUG-01", 5),)))

    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"idempotency_key": "key-1", "order_id": first.order_id}


async def test_concurrent_requests_with_one_key_make_one_order_and_one_charge(
    world: World,
) -> None:
    orders = await asyncio.gather(*(world.saga.place_order(request()) for _ in range(5)))

    assert len({order.order_id for order in orders}) == 1
    assert {order.status for order in orders} == {OrderStatus.CONFIRMED}
    assert world.payments.effects["charge"] == 1
    assert world.inventory.effects["reserve"] == 1


# --- unavailable dependencies --------------------------------------------------------------


async def test_unreachable_dependency_leaves_the_order_pending_at_its_step(
    world: World,
) -> None:
    world.payments.fail("charge", unavailable("payments"))

    with pytest.raises(Unavailable) as raised:
        await world.saga.place_order(request())

    order_id = raised.value.metadata["order_id"]
    assert raised.value.reason == "ORDER_PENDING"
    assert raised.value.metadata == {"order_id": order_id, "step": "CHARGE_PAYMENT"}
    assert (await world.orders.get_order(USER, order_id)).status is OrderStatus.PENDING
    assert await world.saga_step(order_id) is SagaStep.CHARGE_PAYMENT
    assert await world.events() == []


async def test_pending_order_is_finished_by_retrying_with_the_same_key(world: World) -> None:
    world.users.fail("get_user", unavailable("users"))
    with pytest.raises(Unavailable):
        await world.saga.place_order(request())

    order = await world.saga.place_order(request())

    assert order.status is OrderStatus.CONFIRMED
    assert world.payments.effects["charge"] == 1


async def test_pending_order_is_finished_by_recovery(world: World) -> None:
    world.inventory.fail("reserve", unavailable("inventory"))
    with pytest.raises(Unavailable) as raised:
        await world.saga.place_order(request())

    assert await world.saga.recover() == 1

    order = await world.orders.get_order(USER, raised.value.metadata["order_id"])
    assert order.status is OrderStatus.CONFIRMED


async def test_recovery_keeps_an_order_pending_while_its_dependency_is_down(
    world: World,
) -> None:
    world.payments.fail("charge", unavailable("payments"), times=3)
    with pytest.raises(Unavailable) as raised:
        await world.saga.place_order(request())
    order_id = raised.value.metadata["order_id"]

    assert await world.saga.recover() == 0
    assert (await world.orders.get_order(USER, order_id)).status is OrderStatus.PENDING
    loaded = await world.store.load(order_id)
    assert loaded is not None
    assert loaded[1].last_error == "payments unreachable"


async def test_unexpected_downstream_answer_keeps_the_order_pending(world: World) -> None:
    world.payments.fail("charge", AlreadyExists("key reused", reason="IDEMPOTENCY_KEY_REUSED"))

    with pytest.raises(Unavailable) as raised:
        await world.saga.place_order(request())

    assert raised.value.reason == "ORDER_PENDING"
    assert await world.saga_step(raised.value.metadata["order_id"]) is SagaStep.CHARGE_PAYMENT


# --- orders stored by the version that priced before reserving -----------------------------

# That version stored PRICE_ITEMS (then GetProduct per item) and RESERVE_STOCK (the items priced,
# the stock not yet reserved). Its rows are what the same store holds: written here directly.


async def stored_by_the_old_version(world: World, step: SagaStep, *, priced: bool) -> str:
    """An order the old version stored at `step` for `request(key="old-1")`, its items priced
    at 12.99 and 24.99 if `priced`; returns its id."""
    placed = request(key="old-1")
    order = Order(
        order_id=new_order_id(),
        user_id=placed.user_id,
        items=placed.items,
        currency_code=placed.currency_code,
        status=OrderStatus.PENDING,
        create_time=world.clock(),
        update_time=world.clock(),
    )
    if priced:
        mug, tshirt = Money("USD", 1299), Money("USD", 2499)
        order = replace(
            order,
            items=(
                replace(order.items[0], unit_price=mug),
                replace(order.items[1], unit_price=tshirt),
            ),
            total=Money("USD", 2 * 1299 + 2499),
        )
    saga = SagaState(step, payment_token=placed.payment_token)
    await world.store.create(placed.idempotency_key, placed.fingerprint(), order, saga)
    return order.order_id


async def recovered_at_the_old_prices(world: World, order_id: str) -> None:
    """A restarted orders recovers the order to CONFIRMED at 12.99 and 24.99, charging 50.97
    once, with one reservation and one commit."""
    saga = await world.restart()
    assert await saga.recover() == 1

    order = await world.orders.get_order(USER, order_id)
    assert order.status is OrderStatus.CONFIRMED
    assert [item.unit_price for item in order.items] == [Money("USD", 1299), Money("USD", 2499)]
    assert order.total == Money("USD", 5097)
    assert world.payments.amounts == {"pay_1": Money("USD", 5097)}
    assert world.inventory.effects == {"reserve": 1, "commit": 1}
    assert await world.events() == [(order_id, "CONFIRMED", "")]


async def test_order_stored_at_the_old_price_items_step_is_priced_by_its_reservation(
    world: World,
) -> None:
    order_id = await stored_by_the_old_version(world, SagaStep.PRICE_ITEMS, priced=False)

    await recovered_at_the_old_prices(world, order_id)
    assert world.inventory.calls == {"reserve": 1, "commit": 1}


async def test_retry_with_the_key_of_an_order_stored_at_price_items_finishes_that_order(
    world: World,
) -> None:
    order_id = await stored_by_the_old_version(world, SagaStep.PRICE_ITEMS, priced=False)
    saga = await world.restart()

    order = await saga.place_order(request(key="old-1"))

    assert (order.order_id, order.status) == (order_id, OrderStatus.CONFIRMED)
    assert order.total == Money("USD", 5097)
    assert world.payments.effects == {"charge": 1}


async def test_old_price_items_step_is_stored_as_reserve_and_price_before_reserving(
    world: World,
) -> None:
    # If the reserve call then fails, the order waits at a step whose expiry releases stock.
    order_id = await stored_by_the_old_version(world, SagaStep.PRICE_ITEMS, priced=False)
    world.inventory.fail("reserve", Crash(), after=True)

    saga = await world.restart()
    with pytest.raises(Crash):
        await saga.resume(order_id, recovered=True)

    assert await world.saga_step(order_id) is SagaStep.RESERVE_AND_PRICE


async def test_order_stored_at_the_old_price_items_step_and_expired_reserves_nothing(
    world: World,
) -> None:
    order_id = await stored_by_the_old_version(world, SagaStep.PRICE_ITEMS, priced=False)
    world.clock.advance(timedelta(minutes=16))

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, order_id)
    assert (order.status, order.rejection_reason) == (OrderStatus.REJECTED, "CHECKOUT_EXPIRED")
    assert sum(world.inventory.calls.values()) == 0


async def test_order_stored_at_the_old_reserve_stock_step_keeps_the_prices_it_has(
    world: World,
) -> None:
    order_id = await stored_by_the_old_version(world, SagaStep.RESERVE_STOCK, priced=True)
    # The catalog changed since: the order was priced (and told its total) before.
    world.inventory.prices["MUG-01"] = Money("USD", 1499)

    await recovered_at_the_old_prices(world, order_id)


async def test_order_stored_at_the_old_reserve_stock_step_and_expired_releases_its_stock(
    world: World,
) -> None:
    # The old version may have reserved before it died: expiry compensates with a release.
    order_id = await stored_by_the_old_version(world, SagaStep.RESERVE_STOCK, priced=True)
    await world.inventory.reserve(
        order_id, (await world.orders.get_order(USER, order_id)).items, shopper=USER
    )
    world.clock.advance(timedelta(minutes=16))

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, order_id)
    assert (order.status, order.rejection_reason) == (OrderStatus.REJECTED, "CHECKOUT_EXPIRED")
    assert reservation_status(world, order_id) == "RELEASED"
    assert world.inventory.available["MUG-01"] == 100


async def test_old_reserve_stock_step_short_of_stock_rejects_it(world: World) -> None:
    order_id = await stored_by_the_old_version(world, SagaStep.RESERVE_STOCK, priced=True)
    world.inventory.available["MUG-01"] = 1

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, order_id)
    assert (order.status, order.rejection_reason) == (OrderStatus.REJECTED, "INSUFFICIENT_STOCK")
    assert world.payments.calls["charge"] == 0


# --- crashes -----------------------------------------------------------------------------

# Each port call, failed right after it took effect: the orders process "dies" before it can
# store the step's result. Recovery must re-run the step without repeating its effect.
CRASH_POINTS = [
    ("users", "get_user", SagaStep.VALIDATE_USER),
    ("inventory", "reserve", SagaStep.RESERVE_AND_PRICE),
    ("payments", "charge", SagaStep.CHARGE_PAYMENT),
    ("inventory", "commit", SagaStep.COMMIT_RESERVATION),
]


@pytest.mark.parametrize(("service", "method", "step"), CRASH_POINTS)
async def test_crash_after_a_step_is_resumed_on_restart_with_each_effect_once(
    world: World, service: str, method: str, step: SagaStep
) -> None:
    order_id = await world.crash_placing(getattr(world, service), method, request())
    assert await world.saga_step(order_id) is step

    saga = await world.restart()
    assert await saga.recover() == 1

    order = await world.orders.get_order(USER, order_id)
    assert order.status is OrderStatus.CONFIRMED
    assert world.inventory.effects == {"reserve": 1, "commit": 1}
    assert world.payments.effects == {"charge": 1}
    assert world.inventory.available["MUG-01"] == 98
    assert await world.events() == [(order_id, "CONFIRMED", "")]
    assert await world.store.in_flight() == []


async def test_crash_while_compensating_a_decline_is_finished_on_restart(
    world: World,
) -> None:
    order_id = await world.crash_placing(
        world.inventory, "release", request(token="tok_insufficientFunds")
    )

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, order_id)
    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "CARD_DECLINED"
    assert world.inventory.effects == {"reserve": 1, "release": 1}
    assert world.inventory.available["MUG-01"] == 100
    assert await world.events() == [(order_id, "REJECTED", "CARD_DECLINED")]


async def test_expired_saga_before_the_charge_is_compensated_on_restart(
    world: World,
) -> None:
    order_id = await world.crash_placing(world.inventory, "reserve", request())
    world.clock.advance(timedelta(minutes=16))

    saga = await world.restart()
    await saga.recover()

    order = await world.orders.get_order(USER, order_id)
    assert order.status is OrderStatus.REJECTED
    assert order.rejection_reason == "CHECKOUT_EXPIRED"
    assert reservation_status(world, order_id) == "RELEASED"
    assert world.inventory.available["MUG-01"] == 100
    assert world.payments.calls["charge"] == 0
    assert await world.events() == [(order_id, "REJECTED", "CHECKOUT_EXPIRED")]


async def test_expired_saga_at_the_charge_is_still_driven_forward(world: World) -> None:
    order_id = await world.crash_placing(world.payments, "charge", request())
    world.clock.advance(timedelta(hours=2))

    saga = await world.restart()
    await saga.recover()

    assert (await world.orders.get_order(USER, order_id)).status is OrderStatus.CONFIRMED
    assert world.payments.effects == {"charge": 1}


async def test_recovery_skips_orders_that_are_not_in_flight(world: World) -> None:
    await world.saga.place_order(request())

    assert await world.saga.recover() == 0
    assert world.payments.calls["charge"] == 1


async def test_events_carry_the_order_total(world: World) -> None:
    order = await world.saga.place_order(request(items=(("MUG-01", 3),)))
    await world.orders.cancel_order(USER, order.order_id, "")

    totals = {e.type: e.total for e in await world.store.pending_events(10)}
    assert totals == {
        OrderEventType.CONFIRMED: Money("USD", 3897),
        OrderEventType.CANCELLED: Money("USD", 3897),
    }


async def test_every_call_for_an_order_is_made_for_its_shopper_recovery_included(
    world: World,
) -> None:
    world.users.known.add("usr_grace")
    order_id = await world.crash_placing(world.inventory, "reserve", request(user="usr_grace"))
    saga = await world.restart()
    assert await saga.recover() == 1
    world.payments.fail("refund", Crash(), after=True)
    with pytest.raises(Crash):
        await world.orders.cancel_order("usr_grace", order_id, "")
    saga = await world.restart()
    assert await saga.recover() == 1

    assert (await world.orders.get_order("usr_grace", order_id)).status is OrderStatus.CANCELLED
    calls = world.users.shoppers + world.inventory.shoppers + world.payments.shoppers
    assert {method for method, _ in calls} == {
        "get_user",
        "reserve",
        "charge",
        "commit",
        "refund",
        "release",
    }
    assert {shopper for _, shopper in calls} == {"usr_grace"}
