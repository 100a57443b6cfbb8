"""The orders saga's test world: the real SQLite store on a temporary file, in-memory fakes of
users, inventory and payments, and `restart()` to simulate a new orders process."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from services.orders.domain import PlaceOrderInput, SagaStep, validate_place_order
from services.orders.saga import CheckoutSaga
from services.orders.service import Orders
from services.orders.store import SqlOrderStore
from tests.support.clock import ManualClock
from tests.support.orders_fakes import (
    Crash,
    FakeDependency,
    FakeInventory,
    FakePayments,
    FakeUsers,
)

USER = "usr_ada"


@dataclass
class World:
    """The saga and the orders service over one store file, and the fakes they call. Call
    `open()` first; `restart()` drops the in-memory state, as a new process would."""

    path: Path | str
    users: FakeUsers = field(default_factory=lambda: FakeUsers(known={USER}))
    inventory: FakeInventory = field(default_factory=FakeInventory)
    payments: FakePayments = field(default_factory=FakePayments)
    clock: ManualClock = field(default_factory=ManualClock)
    wakeups: int = 0
    owner: str = "orders-0"
    stores: list[SqlOrderStore] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inventory.add("MUG-01", 1299, 100)
        self.inventory.add("TSHIRT-01", 2499, 50)
        self.inventory.add("POSTER-LTD", 4999, 1)

    async def open(self) -> CheckoutSaga:
        """Open the store file and build the saga and the orders service over it."""
        # The same replica before and after a restart: its sagas are its own again at once.
        self.store = await SqlOrderStore.open(self.path, owner=self.owner)
        self.stores.append(self.store)
        self.saga = CheckoutSaga(
            self.store,
            self.users,
            self.inventory,
            self.payments,
            clock=self.clock,
            on_event=self._woken,
            pending_timeout=timedelta(minutes=15),
        )
        self.orders = Orders(self.store, self.saga)
        return self.saga

    def _woken(self) -> None:
        self.wakeups += 1

    async def restart(self) -> CheckoutSaga:
        """Drop the saga (its in-memory state dies with the "process") and reopen the file."""
        await self.store.close()
        return await self.open()

    async def close(self) -> None:
        """Close every store opened (closing twice is harmless)."""
        for store in self.stores:
            await store.close()

    async def events(self) -> list[tuple[str, str, str]]:
        """(order_id, type, reason) of every outbox row."""
        return [(e.order_id, e.type.value, e.reason) for e in await self.store.pending_events(1000)]

    async def crash_placing(
        self, dependency: FakeDependency, method: str, placed: PlaceOrderInput
    ) -> str:
        """Place `placed`, the orders process dying right after `dependency.method` took
        effect; the id of the order left in flight."""
        dependency.fail(method, Crash(), after=True)
        with pytest.raises(Crash):
            await self.saga.place_order(placed)
        [order_id] = await self.store.in_flight()
        return order_id

    async def saga_step(self, order_id: str) -> SagaStep:
        loaded = await self.store.load(order_id)
        assert loaded is not None
        return loaded[1].step


def request(
    key: str = "key-1",
    items: tuple[tuple[str, int], ...] = (("MUG-01", 2), ("TSHIRT-01", 1)),
    token: str = "tok_visa",
    user: str = USER,
    currency: str = "",
) -> PlaceOrderInput:
    return validate_place_order(key, user, items, token, currency)


def reservation_status(world: World, order_id: str) -> str:
    return world.inventory.reservations[order_id].status
