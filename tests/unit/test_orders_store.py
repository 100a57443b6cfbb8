"""The orders store on each backend: orders, saga state, idempotency keys and the outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists
from services.common.money import Money
from services.orders.domain import (
    Order,
    OrderCursor,
    OrderEvent,
    OrderEventType,
    OrderItem,
    OrderStatus,
    SagaState,
    SagaStep,
)
from services.orders.store import SqlOrderStore
from tests.support.databases import INTEGRITY_ERRORS, fail_on, query

T0 = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def path(db_location: Path | str) -> Path | str:
    return db_location


@pytest.fixture
async def store(path: Path | str) -> AsyncIterator[SqlOrderStore]:
    s = await SqlOrderStore.open(path)
    yield s
    await s.close()


def new_order(order_id: str = "ord_1", user_id: str = "usr_1", at: datetime = T0) -> Order:
    return Order(
        order_id=order_id,
        user_id=user_id,
        items=(OrderItem("MUG-01", 2), OrderItem("TSHIRT-01", 1)),
        currency_code="USD",
        status=OrderStatus.PENDING,
        create_time=at,
        update_time=at,
    )


START = SagaState(SagaStep.VALIDATE_USER, payment_token="tok_visa")


def confirmed(order: Order) -> tuple[Order, SagaState, OrderEvent]:
    priced = replace(
        order,
        items=tuple(replace(i, unit_price=Money("USD", 100)) for i in order.items),
        total=Money("USD", 300),
        status=OrderStatus.CONFIRMED,
        payment_id="pay_1",
    )
    event = OrderEvent(
        event_id=f"{order.order_id}:confirmed",
        order_id=order.order_id,
        user_id=order.user_id,
        type=OrderEventType.CONFIRMED,
        reason="",
        total=Money("USD", 300),
        occur_time=T0,
    )
    return priced, SagaState(SagaStep.DONE, outcome=OrderStatus.CONFIRMED), event


def outbox_rows(path: Path | str) -> list[tuple[object, ...]]:
    return query(path, "SELECT event_id, state FROM outbox ORDER BY sequence")


async def test_created_order_loads_back_with_its_saga_state(store: SqlOrderStore) -> None:
    await store.create("key-1", "fp", new_order(), START)

    assert await store.load("ord_1") == (new_order(), START)


async def test_loading_an_unknown_order_gives_none(store: SqlOrderStore) -> None:
    assert await store.load("ord_nope") is None


async def test_same_key_and_fingerprint_returns_the_first_order(store: SqlOrderStore) -> None:
    await store.create("key-1", "fp", new_order(), START)

    again = await store.create("key-1", "fp", new_order("ord_2"), START)

    assert again.order_id == "ord_1"
    assert await store.load("ord_2") is None


async def test_same_key_with_another_fingerprint_is_already_exists(store: SqlOrderStore) -> None:
    await store.create("key-1", "fp", new_order(), START)

    with pytest.raises(AlreadyExists) as raised:
        await store.create("key-1", "other", new_order("ord_2"), START)

    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await store.load("ord_2") is None


async def test_saved_state_survives_reopening_the_file(
    store: SqlOrderStore, path: Path | str
) -> None:
    await store.create("key-1", "fp", new_order(), START)
    order, saga, event = confirmed(new_order())
    await store.save(order, saga, event)
    await store.close()

    reopened = await SqlOrderStore.open(path)
    try:
        assert await reopened.load("ord_1") == (order, saga)
        assert await reopened.pending_events(10) == [event]
    finally:
        await reopened.close()


async def test_save_with_an_event_writes_the_order_and_the_outbox_row(
    store: SqlOrderStore, path: Path | str
) -> None:
    await store.create("key-1", "fp", new_order(), START)
    order, saga, event = confirmed(new_order())

    await store.save(order, saga, event)

    assert outbox_rows(path) == [("ord_1:confirmed", "PENDING")]
    loaded = await store.load("ord_1")
    assert loaded is not None
    assert loaded[0].status is OrderStatus.CONFIRMED


async def test_failed_outbox_insert_rolls_back_the_state_change(
    store: SqlOrderStore, path: Path | str
) -> None:
    await store.create("key-1", "fp", new_order(), START)
    fail_on(path, "INSERT", "outbox", "outbox down")
    order, saga, event = confirmed(new_order())

    with pytest.raises(INTEGRITY_ERRORS, match="outbox down"):
        await store.save(order, saga, event)

    assert await store.load("ord_1") == (new_order(), START)
    assert outbox_rows(path) == []


async def test_failed_order_update_writes_no_event(store: SqlOrderStore, path: Path | str) -> None:
    await store.create("key-1", "fp", new_order(), START)
    fail_on(path, "UPDATE", "saga_state", "saga down")
    order, saga, event = confirmed(new_order())

    with pytest.raises(INTEGRITY_ERRORS, match="saga down"):
        await store.save(order, saga, event)

    assert outbox_rows(path) == []
    loaded = await store.load("ord_1")
    assert loaded is not None
    assert loaded[0].status is OrderStatus.PENDING


async def test_an_event_id_is_written_at_most_once(store: SqlOrderStore, path: Path | str) -> None:
    await store.create("key-1", "fp", new_order(), START)
    order, saga, event = confirmed(new_order())
    await store.save(order, saga, event)

    with pytest.raises(INTEGRITY_ERRORS):
        await store.save(replace(order, payment_id="pay_2"), saga, event)

    assert outbox_rows(path) == [("ord_1:confirmed", "PENDING")]
    loaded = await store.load("ord_1")
    assert loaded is not None
    assert loaded[0].payment_id == "pay_1"


async def test_in_flight_lists_unfinished_sagas_oldest_first(store: SqlOrderStore) -> None:
    await store.create("k2", "fp", new_order("ord_b", at=T0.replace(second=5)), START)
    await store.create("k1", "fp", new_order("ord_a", at=T0), START)
    await store.create("k3", "fp", new_order("ord_c"), START)
    await store.save(*confirmed(new_order("ord_c")))

    assert await store.in_flight() == ["ord_a", "ord_b"]


async def test_list_for_user_is_newest_first_with_items(store: SqlOrderStore) -> None:
    for n in range(3):
        await store.create(f"k{n}", "fp", new_order(f"ord_{n}", at=T0.replace(second=n)), START)
    await store.create("other", "fp", new_order("ord_x", user_id="usr_2"), START)

    orders = await store.list_for_user("usr_1", after=None, limit=5)

    assert [o.order_id for o in orders] == ["ord_2", "ord_1", "ord_0"]
    assert orders[1].items == new_order().items


async def test_list_for_user_continues_after_the_cursor(store: SqlOrderStore) -> None:
    for n in range(3):
        await store.create(f"k{n}", "fp", new_order(f"ord_{n}", at=T0.replace(second=n)), START)
    await store.create("tie", "fp", new_order("ord_1b", at=T0.replace(second=1)), START)

    orders = await store.list_for_user(
        "usr_1", after=OrderCursor(T0.replace(second=1), "ord_1b"), limit=5
    )

    assert [o.order_id for o in orders] == ["ord_1", "ord_0"]


async def test_pending_events_come_in_write_order_until_delivered(store: SqlOrderStore) -> None:
    for order_id in ("ord_b", "ord_a"):
        await store.create(order_id, "fp", new_order(order_id), START)
        await store.save(*confirmed(new_order(order_id)))

    assert [e.order_id for e in await store.pending_events(10)] == ["ord_b", "ord_a"]
    await store.mark_delivered(["ord_b:confirmed"])
    assert [e.order_id for e in await store.pending_events(10)] == ["ord_a"]


async def test_recorded_failures_keep_or_park_the_event(
    store: SqlOrderStore, path: Path | str
) -> None:
    for order_id in ("ord_a", "ord_b"):
        await store.create(order_id, "fp", new_order(order_id), START)
        await store.save(*confirmed(new_order(order_id)))

    await store.record_failure(["ord_a:confirmed"], "unreachable", give_up=False)
    await store.record_failure(["ord_b:confirmed"], "refused", give_up=True)

    assert outbox_rows(path) == [("ord_a:confirmed", "PENDING"), ("ord_b:confirmed", "FAILED")]
    assert query(
        path, "SELECT attempts, last_error FROM outbox WHERE event_id = ?", ("ord_a:confirmed",)
    ) == [(1, "unreachable")]
