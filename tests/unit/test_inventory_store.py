"""The inventory service (`Inventory`) over its real SQLite store, on temporary files."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.common.config import ServiceConfig
from services.common.database import Database, Migrations
from services.common.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound
from services.common.sql import Connection
from services.inventory.app import open_store
from services.inventory.catalog import seed_catalog
from services.inventory.domain import (
    Inventory,
    Product,
    Reservation,
    ReservationStatus,
)
from services.inventory.store import MIGRATIONS, SqlInventoryStore
from tests.support.databases import INTEGRITY_ERRORS, query
from tests.support.samples import CATALOG, T0, item, reserved, usd


class FakeClock:
    """A clock that moves one second forward each time it is read."""

    def __init__(self) -> None:
        self.now = T0 - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def db_path(db_location: Path | str) -> Path | str:
    return db_location


@pytest.fixture
async def store(db_path: Path | str) -> AsyncIterator[SqlInventoryStore]:
    opened = await SqlInventoryStore.open(db_path)
    await opened.seed(CATALOG)
    yield opened
    await opened.close()


@pytest.fixture
def inventory(store: SqlInventoryStore) -> Inventory:
    return Inventory(store, FakeClock())


async def available(inventory: Inventory, sku: str) -> int:
    return (await inventory.get_product(sku)).available


def config_for(db_path: Path | str) -> ServiceConfig:
    if isinstance(db_path, Path):
        return ServiceConfig(service="inventory", listen="unix:/unused.sock", db_path=db_path)
    return ServiceConfig(
        service="inventory",
        listen="unix:/unused.sock",
        db_path=Path("/unused.db"),
        database_url=db_path,
    )


async def test_seed_catalog_is_loaded_on_first_start_only(db_path: Path | str) -> None:
    first = await open_store(config_for(db_path))
    await Inventory(first).reserve("ord_1", [item("MUG-01", 4)])
    await first.close()

    restarted = await open_store(config_for(db_path))
    page = await Inventory(restarted).list_products(100, "")
    await restarted.close()
    assert sorted(p.sku for p in page.products) == sorted(p.sku for p in seed_catalog())
    assert page.next_page_token == ""
    # The restart did not reload the catalog over the stock that is now held.
    assert next(p for p in page.products if p.sku == "MUG-01").available == 96


async def test_seed_into_a_non_empty_store_does_nothing(
    store: SqlInventoryStore, inventory: Inventory
) -> None:
    assert not await store.seed([Product("NEW-01", "New", "", usd(1), on_hand=1)])
    with pytest.raises(NotFound):
        await inventory.get_product("NEW-01")


async def test_products_are_listed_by_sku_one_page_at_a_time(inventory: Inventory) -> None:
    first = await inventory.list_products(3, "")
    last = await inventory.list_products(3, first.next_page_token)
    assert [p.sku for p in first.products] == ["MUG-01", "POSTER-LTD", "STICKER-01"]
    assert first.next_page_token != ""
    assert [p.sku for p in last.products] == ["TSHIRT-01"]
    assert last.next_page_token == ""


async def test_product_pages_do_not_shift_when_products_are_added_between_them(
    store: SqlInventoryStore, db_path: Path | str, inventory: Inventory
) -> None:
    first = await inventory.list_products(2, "")
    query(
        db_path,
        "INSERT INTO products (sku, name, description, currency_code, price_minor_units,"
        " on_hand) VALUES ('AAA-01', 'First', '', 'USD', 1, 1)",
    )
    rest = await inventory.list_products(10, first.next_page_token)
    assert [p.sku for p in first.products + rest.products] == [p.sku for p in CATALOG]


async def test_unknown_product_is_not_found(inventory: Inventory) -> None:
    with pytest.raises(NotFound) as raised:
        await inventory.get_product("NOPE")
    assert (raised.value.reason, raised.value.metadata) == ("PRODUCT_NOT_FOUND", {"skus": "NOPE"})


async def test_reserve_holds_stock_without_selling_it(inventory: Inventory) -> None:
    held = await inventory.reserve("ord_1", [item("TSHIRT-01", 2), item("MUG-01", 3)])
    assert held == Reservation(
        "ord_1",
        (reserved("TSHIRT-01", 2, 2499), reserved("MUG-01", 3, 1299)),
        ReservationStatus.HELD,
        T0,
        T0,
    )
    mug = await inventory.get_product("MUG-01")
    assert (mug.on_hand, mug.held, mug.available) == (10, 3, 7)


def set_price(db_path: Path | str, sku: str, minor_units: int) -> None:
    """Change a product's price behind the service's back (as a catalog update would)."""
    query(db_path, "UPDATE products SET price_minor_units = ? WHERE sku = ?", (minor_units, sku))


async def test_reservation_keeps_the_prices_it_was_made_at(
    inventory: Inventory, db_path: Path | str
) -> None:
    first = await inventory.reserve("ord_1", [item("MUG-01", 1)])
    set_price(db_path, "MUG-01", 1499)

    # Its replay and every later read answer with the price of the reservation...
    assert await inventory.reserve("ord_1", [item("MUG-01", 1)]) == first
    assert await inventory.commit("ord_1") == replace(
        first, status=ReservationStatus.COMMITTED, update_time=T0 + timedelta(seconds=1)
    )
    assert (await inventory.get_reservation("ord_1")).items == (reserved("MUG-01", 1, 1299),)
    # ...while a new reservation pays the new one.
    second = await inventory.reserve("ord_2", [item("MUG-01", 1)])
    assert second.items == (reserved("MUG-01", 1, 1499),)


async def test_reservations_made_before_prices_were_recorded_get_their_products_price(
    db_path: Path | str,
) -> None:
    # A database at the schema before prices (each backend's first migration) holding one
    # reservation.
    before_prices = Migrations(sqlite=MIGRATIONS.sqlite[:1], postgres=MIGRATIONS.postgres[:1])
    old = await Database.open(db_path, before_prices)

    def fill(db: Connection) -> None:
        db.execute(
            "INSERT INTO products (sku, name, description, currency_code, price_minor_units,"
            " on_hand, held) VALUES ('MUG-01', 'Mug', '', 'USD', 1299, 10, 3)"
        )
        db.execute(
            "INSERT INTO reservations (order_id, status, create_time_us, update_time_us)"
            " VALUES ('ord_1', 'HELD', 1, 1)"
        )
        db.execute(
            "INSERT INTO reservation_items (order_id, position, sku, quantity)"
            " VALUES ('ord_1', 0, 'MUG-01', 3)"
        )

    await old.write(fill)
    await old.close()

    upgraded = await SqlInventoryStore.open(db_path)
    try:
        reservation = await Inventory(upgraded).get_reservation("ord_1")
    finally:
        await upgraded.close()
    assert reservation.items == (reserved("MUG-01", 3, 1299),)


async def test_repeated_reserve_holds_once_and_returns_the_same_reservation(
    inventory: Inventory,
) -> None:
    first = await inventory.reserve("ord_1", [item("MUG-01", 3)])
    again = await inventory.reserve("ord_1", [item("MUG-01", 3)])
    assert again == first
    assert await available(inventory, "MUG-01") == 7


async def test_reserve_with_reused_order_id_and_other_items_changes_nothing(
    inventory: Inventory,
) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    with pytest.raises(AlreadyExists):
        await inventory.reserve("ord_1", [item("MUG-01", 4)])
    assert await available(inventory, "MUG-01") == 7


async def test_reserve_is_all_or_nothing(inventory: Inventory) -> None:
    with pytest.raises(FailedPrecondition):
        await inventory.reserve("ord_1", [item("MUG-01", 3), item("POSTER-LTD", 2)])
    assert await available(inventory, "MUG-01") == 10
    with pytest.raises(NotFound):
        await inventory.get_reservation("ord_1")


async def test_reserve_of_unknown_product_holds_nothing(inventory: Inventory) -> None:
    with pytest.raises(NotFound) as raised:
        await inventory.reserve("ord_1", [item("MUG-01", 3), item("NOPE", 1)])
    assert raised.value.reason == "PRODUCT_NOT_FOUND"
    assert await available(inventory, "MUG-01") == 10


async def test_failed_reserve_can_be_retried_once_stock_allows(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("POSTER-LTD", 1)])
    with pytest.raises(FailedPrecondition):
        await inventory.reserve("ord_2", [item("POSTER-LTD", 1)])
    await inventory.release("ord_1")
    assert (
        await inventory.reserve("ord_2", [item("POSTER-LTD", 1)])
    ).status is ReservationStatus.HELD


async def test_commit_sells_the_held_units(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    committed = await inventory.commit("ord_1")
    assert committed.status is ReservationStatus.COMMITTED
    assert committed.update_time == T0 + timedelta(seconds=1)
    mug = await inventory.get_product("MUG-01")
    assert (mug.on_hand, mug.held, mug.available) == (7, 0, 7)


async def test_repeated_commit_returns_the_same_reservation(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    first = await inventory.commit("ord_1")
    assert await inventory.commit("ord_1") == first
    assert (await inventory.get_product("MUG-01")).on_hand == 7


async def test_release_of_held_returns_the_stock_once(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    released = await inventory.release("ord_1")
    assert await inventory.release("ord_1") == released
    assert released.status is ReservationStatus.RELEASED
    assert await available(inventory, "MUG-01") == 10


async def test_release_of_committed_puts_the_stock_back(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    await inventory.commit("ord_1")
    await inventory.release("ord_1")
    mug = await inventory.get_product("MUG-01")
    assert (mug.on_hand, mug.held) == (10, 0)


async def test_commit_after_release_is_refused_and_changes_nothing(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    await inventory.release("ord_1")
    with pytest.raises(FailedPrecondition) as raised:
        await inventory.commit("ord_1")
    assert raised.value.reason == "RESERVATION_RELEASED"
    assert await available(inventory, "MUG-01") == 10


async def test_replayed_reserve_after_release_does_not_hold_again(inventory: Inventory) -> None:
    await inventory.reserve("ord_1", [item("MUG-01", 3)])
    await inventory.release("ord_1")
    again = await inventory.reserve("ord_1", [item("MUG-01", 3)])
    assert again.status is ReservationStatus.RELEASED
    assert await available(inventory, "MUG-01") == 10


@pytest.mark.parametrize("action", ["commit", "release", "get_reservation"])
async def test_unknown_reservation_is_not_found(inventory: Inventory, action: str) -> None:
    with pytest.raises(NotFound) as raised:
        await getattr(inventory, action)("ord_missing")
    assert raised.value.reason == "RESERVATION_NOT_FOUND"


async def test_reservation_survives_a_restart(
    db_path: Path | str, store: SqlInventoryStore, inventory: Inventory
) -> None:
    held = await inventory.reserve("ord_1", [item("MUG-01", 3)])
    await store.close()
    reopened = await SqlInventoryStore.open(db_path)
    try:
        assert await Inventory(reopened).get_reservation("ord_1") == held
        assert await available(Inventory(reopened), "MUG-01") == 7
    finally:
        await reopened.close()


async def test_database_refuses_negative_stock(
    store: SqlInventoryStore, db_path: Path | str
) -> None:
    with pytest.raises(INTEGRITY_ERRORS, match=r"(?i)check constraint"):
        query(db_path, "UPDATE products SET held = on_hand + 1 WHERE sku = 'MUG-01'")


async def test_concurrent_reservations_never_oversell(
    store: SqlInventoryStore, db_path: Path | str
) -> None:
    # Separate databases on one file (or Postgres database), as separate processes would have
    # them: SQLite's write lock (Postgres: the writers' advisory lock) must serialize each
    # check and hold across them, and each writer thread within one.
    others = [await SqlInventoryStore.open(db_path) for _ in range(2)]
    services = [Inventory(s) for s in (store, *others)]

    async def attempt(n: int) -> str:
        try:
            await services[n % len(services)].reserve(f"ord_{n}", [item("TSHIRT-01", 1)])
        except DomainError as error:
            return error.reason
        return "HELD"

    try:
        outcomes = await asyncio.gather(*(attempt(n) for n in range(12)))
    finally:
        for other in others:
            await other.close()
    assert Counter(outcomes) == {"HELD": 5, "INSUFFICIENT_STOCK": 7}
    tshirt = await services[0].get_product("TSHIRT-01")
    assert (tshirt.held, tshirt.available) == (5, 0)
