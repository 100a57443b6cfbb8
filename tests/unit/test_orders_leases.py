"""Orders replicas sharing one database, on each backend: a saga is driven by the replica that
holds its lease, a replica that lost it writes nothing, the sagas of a dead replica are taken
over once its leases lapse, and one relay at a time takes its turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.clock import to_micros
from services.common.errors import Unavailable
from services.orders.domain import LeaseLost, Order, OrderStatus, SagaStep
from services.orders.saga import CheckoutSaga
from services.orders.store import SqlOrderStore
from tests.support.databases import query
from tests.support.orders_fakes import (
    Crash,
    FakeInventory,
    FakePayments,
    FakeUsers,
    unavailable,
)
from tests.support.orders_world import USER, request
from tests.unit.test_orders_store import START, confirmed, new_order

TTL = timedelta(seconds=15)
TTL_US = 15_000_000


@dataclass
class MicroClock:
    """The replicas' shared clock, in epoch microseconds, moved by hand."""

    now: int = to_micros(new_order().create_time)

    def __call__(self) -> int:
        return self.now

    def advance(self, microseconds: int) -> None:
        self.now += microseconds


@pytest.fixture
def clock() -> MicroClock:
    return MicroClock()


@pytest.fixture
async def replicas(
    db_location: Path | str, clock: MicroClock
) -> AsyncIterator[tuple[SqlOrderStore, SqlOrderStore]]:
    """Two replicas' stores on one database (orders-0 opens it first and migrates it)."""
    first = await SqlOrderStore.open(db_location, owner="orders-0", lease_ttl=TTL, clock=clock)
    second = await SqlOrderStore.open(db_location, owner="orders-1", lease_ttl=TTL, clock=clock)
    yield first, second
    await second.close()
    await first.close()


async def test_a_new_saga_is_leased_to_the_replica_that_placed_it(
    replicas: tuple[SqlOrderStore, SqlOrderStore], clock: MicroClock
) -> None:
    first, second = replicas
    await first.create("key-1", "fp", new_order(), START)

    assert await second.claim("ord_1") is False
    assert await second.claim_in_flight(10) == []
    assert await first.claim("ord_1") is True


async def test_a_lapsed_lease_is_taken_over_and_its_old_holder_writes_nothing(
    replicas: tuple[SqlOrderStore, SqlOrderStore], clock: MicroClock, db_location: Path | str
) -> None:
    first, second = replicas
    order = await first.create("key-1", "fp", new_order(), START)
    clock.advance(TTL_US - 1)
    assert await second.claim("ord_1") is False

    clock.advance(1)
    assert await second.claim("ord_1") is True
    with pytest.raises(LeaseLost) as lost:
        await first.save(order, replace(START, step=SagaStep.CHARGE_PAYMENT))

    assert lost.value.reason == "ORDER_PENDING"
    assert query(db_location, "SELECT step, lease_owner FROM saga_state") == [
        ("VALIDATE_USER", "orders-1")
    ]
    # The new holder's writes go through, and renew its lease.
    await second.save(order, replace(START, step=SagaStep.CHARGE_PAYMENT))
    clock.advance(TTL_US - 1)
    assert await first.claim("ord_1") is False


async def test_a_finished_saga_lets_its_lease_go_at_once(
    replicas: tuple[SqlOrderStore, SqlOrderStore],
) -> None:
    first, second = replicas
    await first.create("key-1", "fp", new_order(), START)
    await first.save(*confirmed(new_order()))

    # A cancellation on the other replica need not wait for the lease to lapse.
    assert await second.claim("ord_1") is True


async def test_the_sweep_claims_only_what_no_live_replica_holds_oldest_first(
    replicas: tuple[SqlOrderStore, SqlOrderStore], clock: MicroClock
) -> None:
    first, second = replicas
    for number in range(3):
        order = new_order(f"ord_{number}", at=new_order().create_time + timedelta(seconds=number))
        await first.create(f"key-{number}", "fp", order, START)
    await first.save(*confirmed(new_order("ord_2")))
    clock.advance(TTL_US)
    newest = new_order("ord_new", at=new_order().create_time + timedelta(seconds=10))
    await second.create("key-new", "fp", newest, START)

    assert await second.claim_in_flight(1) == ["ord_0"]
    assert await second.claim_in_flight(10) == ["ord_0", "ord_1", "ord_new"]
    assert await first.claim_in_flight(10) == []


async def test_a_restarted_replica_has_its_sagas_back_at_once(
    replicas: tuple[SqlOrderStore, SqlOrderStore], db_location: Path | str, clock: MicroClock
) -> None:
    first, _ = replicas
    await first.create("key-1", "fp", new_order(), START)
    restarted = await SqlOrderStore.open(db_location, owner="orders-0", clock=clock)
    try:
        assert await restarted.claim_in_flight(10) == ["ord_1"]
    finally:
        await restarted.close()


async def test_the_sweep_pages_through_what_it_may_claim(
    replicas: tuple[SqlOrderStore, SqlOrderStore], clock: MicroClock
) -> None:
    first, second = replicas
    for number in range(5):
        order = new_order(f"ord_{number}", at=new_order().create_time + timedelta(seconds=number))
        await first.create(f"key-{number}", "fp", order, START)
    clock.advance(TTL_US)

    pages = [await second.claim_in_flight(2)]
    while pages[-1]:
        pages.append(await second.claim_in_flight(2, after=pages[-1][-1]))

    assert pages == [["ord_0", "ord_1"], ["ord_2", "ord_3"], ["ord_4"], []]


async def test_a_claim_of_an_unknown_order_is_refused(
    replicas: tuple[SqlOrderStore, SqlOrderStore],
) -> None:
    assert await replicas[0].claim("ord_missing") is False


# --- the saga on two replicas ------------------------------------------------------------


@dataclass
class GatedPayments(FakePayments):
    """Payments whose charges wait at a gate, once `closed`: a saga caught mid-step."""

    closed: bool = False
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def charge(self, *args: Any, **kwargs: Any) -> str:
        if self.closed:
            self.arrived.set()
            await self.gate.wait()
        return await super().charge(*args, **kwargs)


@dataclass
class Shop:
    """The dependencies both orders replicas' sagas call."""

    users: FakeUsers
    inventory: FakeInventory
    payments: GatedPayments


@pytest.fixture
def shop() -> Shop:
    inventory = FakeInventory()
    inventory.add("MUG-01", 1299, 100)
    inventory.add("TSHIRT-01", 2499, 50)
    return Shop(FakeUsers(known={USER}), inventory, GatedPayments())


def saga_of(store: SqlOrderStore, shop: Shop, lease_wait: float = 0.0) -> CheckoutSaga:
    return CheckoutSaga(store, shop.users, shop.inventory, shop.payments, lease_wait=lease_wait)


async def test_the_other_replica_finishes_the_sagas_of_one_that_died(
    replicas: tuple[SqlOrderStore, SqlOrderStore], clock: MicroClock, shop: Shop
) -> None:
    first, second = replicas
    shop.payments.fail("charge", Crash(), after=True)
    with pytest.raises(Crash):
        await saga_of(first, shop).place_order(request())
    [order_id] = await second.in_flight()

    # The dead replica's lease still runs: the survivor leaves the order alone.
    assert await saga_of(second, shop).recover() == 0
    clock.advance(TTL_US)
    assert await saga_of(second, shop).recover() == 1

    loaded = await second.load(order_id)
    assert loaded is not None
    assert loaded[0].status is OrderStatus.CONFIRMED
    assert len(shop.payments.charges) == 1


async def placing_held_at_the_charge(store: SqlOrderStore, shop: Shop) -> asyncio.Task[Order]:
    """A PlaceOrder on `store`'s replica, started and waiting at its charge (shop.payments.gate
    lets it go on)."""
    shop.payments.closed = True
    placing = asyncio.create_task(saga_of(store, shop).place_order(request()))
    await shop.payments.arrived.wait()
    return placing


async def test_a_retried_request_on_another_replica_waits_for_the_live_driver(
    replicas: tuple[SqlOrderStore, SqlOrderStore], shop: Shop
) -> None:
    first, second = replicas
    placing = await placing_held_at_the_charge(first, shop)

    retry = asyncio.create_task(saga_of(second, shop, lease_wait=30).place_order(request()))
    done, _ = await asyncio.wait({retry}, timeout=0.2)
    assert not done, "the retry did not wait for the replica driving the order"
    shop.payments.gate.set()
    placed, retried = await asyncio.gather(placing, retry)

    assert placed.status is retried.status is OrderStatus.CONFIRMED
    assert retried.order_id == placed.order_id
    assert shop.payments.effects["charge"] == 1


async def test_a_request_gives_up_with_order_pending_while_another_replica_drives(
    replicas: tuple[SqlOrderStore, SqlOrderStore], shop: Shop
) -> None:
    first, second = replicas
    placing = await placing_held_at_the_charge(first, shop)
    try:
        with pytest.raises(Unavailable) as pending:
            await saga_of(second, shop, lease_wait=0.05).place_order(request())
        assert pending.value.reason == "ORDER_PENDING"
    finally:
        shop.payments.gate.set()
        await placing


async def test_a_replica_whose_lease_was_taken_stops_and_writes_nothing(
    replicas: tuple[SqlOrderStore, SqlOrderStore],
    clock: MicroClock,
    shop: Shop,
    db_location: Path | str,
) -> None:
    first, second = replicas
    placing = await placing_held_at_the_charge(first, shop)
    # The first replica stalls past its lease; the second takes the saga over.
    clock.advance(TTL_US)
    [order_id] = await second.claim_in_flight(10)
    shop.payments.gate.set()

    with pytest.raises(LeaseLost):
        await placing
    assert query(db_location, "SELECT step, lease_owner FROM saga_state") == [
        ("CHARGE_PAYMENT", "orders-1")
    ]
    assert await saga_of(second, shop).recover() == 1
    loaded = await second.load(order_id)
    assert loaded is not None
    assert loaded[0].status is OrderStatus.CONFIRMED
    assert shop.payments.effects["charge"] == 1
    assert len(query(db_location, "SELECT event_id FROM outbox")) == 1


async def test_a_finished_order_is_cancelled_on_either_replica(
    replicas: tuple[SqlOrderStore, SqlOrderStore], shop: Shop
) -> None:
    first, second = replicas
    placed = await saga_of(first, shop).place_order(request())
    # A replay of the PlaceOrder on the first replica claims the DONE saga...
    await saga_of(first, shop).place_order(request())

    # ...and holds nothing: the second cancels it at once.
    cancelled = await saga_of(second, shop).cancel_order(placed.order_id, "changed my mind")

    assert cancelled.status is OrderStatus.CANCELLED


async def test_a_stalled_saga_is_taken_by_the_next_request_on_any_replica(
    replicas: tuple[SqlOrderStore, SqlOrderStore], shop: Shop
) -> None:
    first, second = replicas
    shop.payments.fail("charge", unavailable("payments"))
    with pytest.raises(Unavailable):
        await saga_of(first, shop).place_order(request())

    # The retry lands on the other replica: it need not wait for the first one's lease.
    retried = await saga_of(second, shop, lease_wait=0).place_order(request())

    assert retried.status is OrderStatus.CONFIRMED


# --- the relay's turn ----------------------------------------------------------------------


async def test_one_relay_at_a_time_takes_its_turn(
    replicas: tuple[SqlOrderStore, SqlOrderStore], db_location: Path | str
) -> None:
    first, second = replicas
    # On SQLite one process owns the database: the turns are its tasks'.
    other = second if not isinstance(db_location, Path) else first
    async with first.relay_turn():
        waiting = asyncio.create_task(enter(other))
        done, _ = await asyncio.wait({waiting}, timeout=0.2)
        assert not done, "the turn was taken twice"
    await asyncio.wait_for(waiting, timeout=10)


async def enter(store: SqlOrderStore) -> None:
    async with store.relay_turn():
        pass


@pytest.mark.postgres
async def test_a_turn_held_by_a_dead_connection_is_free_at_once(postgres_database: str) -> None:
    first = await SqlOrderStore.open(postgres_database, owner="orders-0")
    second = await SqlOrderStore.open(postgres_database, owner="orders-1")
    try:
        async with first.relay_turn():
            # What a replica's death does to its connections: the server ends them.
            query(
                postgres_database,
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND objsubid = 2",
            )
            await asyncio.wait_for(enter(second), timeout=10)
        # The holder noticed, and takes turns again on a new connection.
        await asyncio.wait_for(enter(first), timeout=10)
    finally:
        await second.close()
        await first.close()
