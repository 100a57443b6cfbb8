"""The outbox relay against the real store and a fake notifications service."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.money import Money
from services.orders.domain import (
    Order,
    OrderEvent,
    OrderEventType,
    OrderStatus,
    SagaState,
    SagaStep,
)
from services.orders.relay import Backoff, OutboxRelay
from services.orders.store import SqlOrderStore
from tests.support.orders_fakes import Crash, FakeNotifications, unavailable
from tests.support.polling import eventually

T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(db_location: Path | str) -> AsyncIterator[SqlOrderStore]:
    s = await SqlOrderStore.open(db_location)
    yield s
    await s.close()


async def write_event(store: SqlOrderStore, order_id: str) -> OrderEvent:
    """Confirm a new order `order_id`, which writes its CONFIRMED event to the outbox."""
    order = Order(order_id, "usr_1", (), "USD", OrderStatus.PENDING, T0, T0)
    await store.create(order_id, "fp", order, SagaState(SagaStep.VALIDATE_USER))
    event = OrderEvent(
        f"{order_id}:confirmed",
        order_id,
        "usr_1",
        OrderEventType.CONFIRMED,
        "",
        Money("USD", 100),
        T0,
    )
    await store.save(order, SagaState(SagaStep.DONE), event)
    return event


class RecordingSleep:
    """Stands in for asyncio.sleep: records each delay and only yields to the event loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `condition()` until true, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks started by a test; cancelled at teardown."""
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_delivers_pending_events_in_write_order(store: SqlOrderStore) -> None:
    events = [await write_event(store, f"ord_{n}") for n in range(3)]
    consumer = FakeNotifications()

    delivered = await OutboxRelay(store, consumer).deliver_pending()

    assert delivered == 3
    assert consumer.received == events
    assert await store.pending_events(10) == []


async def test_unreachable_consumer_leaves_the_event_and_those_after_it_pending(
    store: SqlOrderStore,
) -> None:
    events = [await write_event(store, f"ord_{n}") for n in range(2)]
    consumer = FakeNotifications()
    consumer.fail("publish", unavailable("notifications"))

    with pytest.raises(type(unavailable())):
        await OutboxRelay(store, consumer).deliver_pending()

    assert await store.pending_events(10) == events
    assert consumer.received == []


async def test_event_acknowledged_but_not_marked_is_redelivered_and_deduped(
    store: SqlOrderStore,
) -> None:
    event = await write_event(store, "ord_1")
    consumer = FakeNotifications()
    consumer.fail("publish", Crash(), after=True)
    with pytest.raises(Crash):
        await OutboxRelay(store, consumer).deliver_pending()

    assert await OutboxRelay(store, consumer).deliver_pending() == 1

    assert consumer.calls["publish"] == 2
    assert consumer.received == [event]


async def test_refused_event_is_parked_and_does_not_block_the_rest(store: SqlOrderStore) -> None:
    first, refused, third = [await write_event(store, f"ord_{n}") for n in range(3)]
    consumer = FakeNotifications(refused={refused.event_id})

    assert await OutboxRelay(store, consumer).deliver_pending() == 2

    assert consumer.received == [first, third]
    assert await store.pending_events(10) == []
    # The batch that named it went again without it.
    assert consumer.calls["publish"] == 2


async def test_pending_events_go_in_batches_of_at_most_batch_size_in_order(
    store: SqlOrderStore,
) -> None:
    events = [await write_event(store, f"ord_{n}") for n in range(5)]
    consumer = FakeNotifications()

    assert await OutboxRelay(store, consumer, batch_size=2).deliver_pending() == 5

    assert consumer.received == events
    assert consumer.calls["publish"] == 3


async def test_a_batch_refused_as_a_whole_stays_pending(store: SqlOrderStore) -> None:
    events = [await write_event(store, f"ord_{n}") for n in range(2)]
    consumer = FakeNotifications()
    consumer.fail("publish", InvalidArgument("too many events"))

    with pytest.raises(InvalidArgument):
        await OutboxRelay(store, consumer).deliver_pending()

    assert await store.pending_events(10) == events


async def test_run_retries_with_growing_capped_backoff_until_delivered(
    store: SqlOrderStore, running: list[asyncio.Task[None]]
) -> None:
    event = await write_event(store, "ord_1")
    consumer = FakeNotifications()
    consumer.fail("publish", unavailable("notifications"), times=6)
    sleep = RecordingSleep()
    relay = OutboxRelay(
        store,
        consumer,
        backoff=Backoff(initial=1.0, maximum=4.0),
        rng=random.Random(7),
        sleep=sleep,
    )

    running.append(asyncio.create_task(relay.run()))
    await wait_until(lambda: consumer.received == [event])

    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert len(sleep.delays) == 6
    for delay, ceiling in zip(sleep.delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling

    # Received before it is marked: wait for the mark.
    async def marked() -> bool:
        return await store.pending_events(10) == []

    await eventually(marked, 5.0, "the event marked delivered")


def test_backoff_never_overflows_after_many_failures() -> None:
    assert 5.0 <= Backoff(maximum=10.0).delay(10_000, random.Random(1)) <= 10.0


class CountingOutbox:
    """The store, counting how often the relay looked for pending events."""

    def __init__(self, store: SqlOrderStore) -> None:
        self.store = store
        self.polls = 0

    async def pending_events(self, limit: int) -> list[OrderEvent]:
        self.polls += 1
        return await self.store.pending_events(limit)

    async def mark_delivered(self, event_ids: list[str]) -> None:
        await self.store.mark_delivered(event_ids)

    async def record_failure(self, event_ids: list[str], error: str, *, give_up: bool) -> None:
        await self.store.record_failure(event_ids, error, give_up=give_up)

    def relay_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.store.relay_turn()


async def test_wake_delivers_without_waiting_for_the_poll(
    store: SqlOrderStore, running: list[asyncio.Task[None]]
) -> None:
    outbox = CountingOutbox(store)
    consumer = FakeNotifications()
    relay = OutboxRelay(outbox, consumer, poll_interval=3600)
    running.append(asyncio.create_task(relay.run()))
    await wait_until(lambda: outbox.polls == 1)  # first pass done: now parked for an hour

    event = await write_event(store, "ord_1")
    relay.wake()

    await wait_until(lambda: consumer.received == [event], within=2.0)
