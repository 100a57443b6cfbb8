"""Inventory domain rules and the SQLite store (temporary files, no network)."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.config import ServiceConfig
from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from services.common.money import Money
from services.common.paging import encode_token
from services.inventory import domain
from services.inventory.app import open_store, seed_catalog
from services.inventory.domain import (
    Product,
    Reservation,
    ReservationItem,
    ReservationStatus,
    StockChange,
)
from services.inventory.store import InventoryStore

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class FakeClock:
    """A clock that moves one second forward each time it is read."""

    def __init__(self) -> None:
        self.now = T0 - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def usd(minor_units: int) -> Money:
    return Money("USD", minor_units)


CATALOG = [
    Product("MUG-01", "Mug", "A mug", usd(1299), on_hand=10),
    Product("POSTER-LTD", "Poster", "", usd(4999), on_hand=1),
    Product("STICKER-01", "Sticker", "Vinyl", usd(299), on_hand=1000),
    Product("TSHIRT-01", "T-shirt", "Cotton", usd(2499), on_hand=5),
]


def item(sku: str, quantity: int) -> ReservationItem:
    return ReservationItem(sku, quantity)


def reservation(status: ReservationStatus, *items: ReservationItem) -> Reservation:
    return Reservation("ord_1", tuple(items), status, T0, T0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "inventory.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[InventoryStore]:
    opened = InventoryStore.open(db_path, FakeClock())
    opened.seed(CATALOG)
    yield opened
    opened.close()


def available(store: InventoryStore, sku: str) -> int:
    return store.get_product(sku).available


# --- validation ----------------------------------------------------------------------------------


def test_reservation_request_lists_every_violation() -> None:
    items = [item("", 1), item("MUG-01", 0), item("MUG-01", -2), item("  ", 3)]
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_reservation("", items)
    assert raised.value.violations == [
        FieldViolation("order_id", "must not be empty"),
        FieldViolation("items[0].sku", "must not be empty"),
        FieldViolation("items[1].quantity", "must be > 0"),
        FieldViolation("items[2].sku", "duplicates items[1].sku; merge them"),
        FieldViolation("items[2].quantity", "must be > 0"),
        FieldViolation("items[3].sku", "must not be empty"),
    ]


def test_reservation_request_needs_items() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_reservation("ord_1", [])
    assert raised.value.violations == [FieldViolation("items", "must contain at least one item")]


def test_reservation_request_caps_the_number_of_items() -> None:
    items = [item(f"SKU-{n}", 1) for n in range(domain.MAX_ITEMS + 1)]
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_reservation("ord_1", items)
    assert [v.field for v in raised.value.violations] == ["items"]


def test_overlong_order_id_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_order_id("x" * (domain.MAX_ID_LENGTH + 1), "ReleaseStock")
    assert raised.value.violations == [
        FieldViolation("order_id", f"must be at most {domain.MAX_ID_LENGTH} characters")
    ]


def test_empty_sku_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_sku("")
    assert raised.value.violations == [FieldViolation("sku", "must not be empty")]


def test_valid_reservation_request_passes() -> None:
    domain.validate_reservation("ord_1", [item("MUG-01", 1), item("TSHIRT-01", 2)])


def test_page_request_lists_bad_size_and_bad_token() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.page_request(-1, "not-a-token")
    assert [v.field for v in raised.value.violations] == ["page_size", "page_token"]


def test_page_request_decodes_offset_and_defaults_size() -> None:
    assert domain.page_request(0, encode_token(7)) == (7, 50)


# --- rules ---------------------------------------------------------------------------------------


def test_available_is_on_hand_minus_held() -> None:
    assert Product("A", "a", "", usd(1), on_hand=10, held=4).available == 6


def test_replay_with_same_items_in_any_order_returns_existing() -> None:
    existing = reservation(ReservationStatus.HELD, item("A", 1), item("B", 2))
    assert domain.replay(existing, [item("B", 2), item("A", 1)]) is existing


def test_replay_with_different_items_is_idempotency_key_reuse() -> None:
    existing = reservation(ReservationStatus.HELD, item("A", 1))
    with pytest.raises(AlreadyExists) as raised:
        domain.replay(existing, [item("A", 2)])
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"


def test_check_stock_reports_every_unknown_sku() -> None:
    products = {p.sku: p for p in CATALOG}
    with pytest.raises(NotFound) as raised:
        domain.check_stock([item("NOPE-1", 1), item("MUG-01", 1), item("NOPE-2", 1)], products)
    assert raised.value.reason == "PRODUCT_NOT_FOUND"
    assert raised.value.metadata == {"skus": "NOPE-1,NOPE-2"}


def test_check_stock_reports_every_short_item() -> None:
    products = {p.sku: p for p in CATALOG}
    with pytest.raises(FailedPrecondition) as raised:
        domain.check_stock(
            [item("POSTER-LTD", 2), item("MUG-01", 1), item("TSHIRT-01", 6)], products
        )
    assert raised.value.reason == "INSUFFICIENT_STOCK"
    assert raised.value.metadata == {"skus": "POSTER-LTD,TSHIRT-01"}
    assert raised.value.violations == [
        PreconditionViolation("STOCK", "sku:POSTER-LTD", "requested 2, available 1"),
        PreconditionViolation("STOCK", "sku:TSHIRT-01", "requested 6, available 5"),
    ]


def test_check_stock_allows_taking_the_last_unit() -> None:
    domain.check_stock([item("POSTER-LTD", 1)], {p.sku: p for p in CATALOG})


def test_commit_of_held_sells_the_units() -> None:
    status, changes = domain.commit(reservation(ReservationStatus.HELD, item("A", 3)))
    assert status is ReservationStatus.COMMITTED
    assert changes == [StockChange("A", -3, -3)]


def test_commit_of_committed_changes_nothing() -> None:
    assert domain.commit(reservation(ReservationStatus.COMMITTED, item("A", 3))) == (
        ReservationStatus.COMMITTED,
        [],
    )


def test_commit_of_released_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        domain.commit(reservation(ReservationStatus.RELEASED, item("A", 3)))
    assert raised.value.reason == "RESERVATION_RELEASED"


def test_release_of_held_drops_the_hold() -> None:
    status, changes = domain.release(reservation(ReservationStatus.HELD, item("A", 3)))
    assert status is ReservationStatus.RELEASED
    assert changes == [StockChange("A", 0, -3)]


def test_release_of_committed_puts_units_back_on_hand() -> None:
    status, changes = domain.release(reservation(ReservationStatus.COMMITTED, item("A", 3)))
    assert status is ReservationStatus.RELEASED
    assert changes == [StockChange("A", 3, 0)]


def test_release_of_released_changes_nothing() -> None:
    assert domain.release(reservation(ReservationStatus.RELEASED, item("A", 3))) == (
        ReservationStatus.RELEASED,
        [],
    )


# --- seed catalog --------------------------------------------------------------------------------


def test_shipped_catalog_has_the_products_other_services_rely_on() -> None:
    products = {p.sku: p for p in seed_catalog()}
    assert len(products) >= 8
    relied_on = {"MUG-01", "TSHIRT-01", "STICKER-01", "POSTER-LTD"}
    assert {sku: (p.price, p.on_hand) for sku, p in products.items() if sku in relied_on} == {
        "MUG-01": (usd(1299), 100),
        "TSHIRT-01": (usd(2499), 50),
        "STICKER-01": (usd(299), 1000),
        "POSTER-LTD": (usd(4999), 1),
    }


def entry(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sku": "A",
        "name": "a",
        "price": {"currency_code": "USD", "minor_units": 100},
        "on_hand": 1,
    }
    return base | overrides


def test_catalog_entry_without_description_gets_an_empty_one() -> None:
    assert domain.parse_catalog({"products": [entry()]}) == [
        Product("A", "a", "", usd(100), on_hand=1)
    ]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "products"),
        ({"products": [entry(), entry()]}, "duplicate sku"),
        ({"products": [entry(on_hand=-1)]}, "on_hand"),
        ({"products": [entry(price={"currency_code": "usd", "minor_units": 1})]}, "price"),
        ({"products": [{"sku": "A"}]}, "missing or malformed"),
    ],
)
def test_malformed_catalog_is_refused(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        domain.parse_catalog(document)


def config_for(db_path: Path) -> ServiceConfig:
    return ServiceConfig(service="inventory", listen="unix:/unused.sock", db_path=db_path)


def test_seed_catalog_is_loaded_on_first_start_only(db_path: Path) -> None:
    first = open_store(config_for(db_path))
    first.reserve("ord_1", [item("MUG-01", 4)])
    first.close()

    restarted = open_store(config_for(db_path))
    products, more = restarted.list_products(0, 100)
    restarted.close()
    assert sorted(p.sku for p in products) == sorted(p.sku for p in seed_catalog())
    assert not more
    # The restart did not reload the catalog over the stock that is now held.
    assert next(p for p in products if p.sku == "MUG-01").available == 96


def test_seed_into_a_non_empty_store_does_nothing(store: InventoryStore) -> None:
    assert not store.seed([Product("NEW-01", "New", "", usd(1), on_hand=1)])
    with pytest.raises(NotFound):
        store.get_product("NEW-01")


# --- store ---------------------------------------------------------------------------------------


def test_products_are_listed_by_sku_one_page_at_a_time(store: InventoryStore) -> None:
    first, more_after_first = store.list_products(0, 3)
    last, more_after_last = store.list_products(3, 3)
    assert [p.sku for p in first] == ["MUG-01", "POSTER-LTD", "STICKER-01"]
    assert more_after_first
    assert [p.sku for p in last] == ["TSHIRT-01"]
    assert not more_after_last


def test_unknown_product_is_not_found(store: InventoryStore) -> None:
    with pytest.raises(NotFound) as raised:
        store.get_product("NOPE")
    assert (raised.value.reason, raised.value.metadata) == ("PRODUCT_NOT_FOUND", {"skus": "NOPE"})


def test_reserve_holds_stock_without_selling_it(store: InventoryStore) -> None:
    held = store.reserve("ord_1", [item("TSHIRT-01", 2), item("MUG-01", 3)])
    assert held == Reservation(
        "ord_1", (item("TSHIRT-01", 2), item("MUG-01", 3)), ReservationStatus.HELD, T0, T0
    )
    mug = store.get_product("MUG-01")
    assert (mug.on_hand, mug.held, mug.available) == (10, 3, 7)


def test_repeated_reserve_holds_once_and_returns_the_same_reservation(
    store: InventoryStore,
) -> None:
    first = store.reserve("ord_1", [item("MUG-01", 3)])
    again = store.reserve("ord_1", [item("MUG-01", 3)])
    assert again == first
    assert available(store, "MUG-01") == 7


def test_reserve_with_reused_order_id_and_other_items_changes_nothing(
    store: InventoryStore,
) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    with pytest.raises(AlreadyExists):
        store.reserve("ord_1", [item("MUG-01", 4)])
    assert available(store, "MUG-01") == 7


def test_reserve_is_all_or_nothing(store: InventoryStore) -> None:
    with pytest.raises(FailedPrecondition):
        store.reserve("ord_1", [item("MUG-01", 3), item("POSTER-LTD", 2)])
    assert available(store, "MUG-01") == 10
    with pytest.raises(NotFound):
        store.get_reservation("ord_1")


def test_reserve_of_unknown_product_holds_nothing(store: InventoryStore) -> None:
    with pytest.raises(NotFound) as raised:
        store.reserve("ord_1", [item("MUG-01", 3), item("NOPE", 1)])
    assert raised.value.reason == "PRODUCT_NOT_FOUND"
    assert available(store, "MUG-01") == 10


def test_failed_reserve_can_be_retried_once_stock_allows(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("POSTER-LTD", 1)])
    with pytest.raises(FailedPrecondition):
        store.reserve("ord_2", [item("POSTER-LTD", 1)])
    store.release("ord_1")
    assert store.reserve("ord_2", [item("POSTER-LTD", 1)]).status is ReservationStatus.HELD


def test_commit_sells_the_held_units(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    committed = store.commit("ord_1")
    assert committed.status is ReservationStatus.COMMITTED
    assert committed.update_time == T0 + timedelta(seconds=1)
    mug = store.get_product("MUG-01")
    assert (mug.on_hand, mug.held, mug.available) == (7, 0, 7)


def test_repeated_commit_returns_the_same_reservation(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    first = store.commit("ord_1")
    assert store.commit("ord_1") == first
    assert store.get_product("MUG-01").on_hand == 7


def test_release_of_held_returns_the_stock_once(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    released = store.release("ord_1")
    assert store.release("ord_1") == released
    assert released.status is ReservationStatus.RELEASED
    assert available(store, "MUG-01") == 10


def test_release_of_committed_puts_the_stock_back(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    store.commit("ord_1")
    store.release("ord_1")
    mug = store.get_product("MUG-01")
    assert (mug.on_hand, mug.held) == (10, 0)


def test_commit_after_release_is_refused_and_changes_nothing(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    store.release("ord_1")
    with pytest.raises(FailedPrecondition) as raised:
        store.commit("ord_1")
    assert raised.value.reason == "RESERVATION_RELEASED"
    assert available(store, "MUG-01") == 10


def test_replayed_reserve_after_release_does_not_hold_again(store: InventoryStore) -> None:
    store.reserve("ord_1", [item("MUG-01", 3)])
    store.release("ord_1")
    again = store.reserve("ord_1", [item("MUG-01", 3)])
    assert again.status is ReservationStatus.RELEASED
    assert available(store, "MUG-01") == 10


@pytest.mark.parametrize("action", ["commit", "release", "get_reservation"])
def test_unknown_reservation_is_not_found(store: InventoryStore, action: str) -> None:
    with pytest.raises(NotFound) as raised:
        getattr(store, action)("ord_missing")
    assert raised.value.reason == "RESERVATION_NOT_FOUND"


def test_reservation_survives_a_restart(db_path: Path, store: InventoryStore) -> None:
    held = store.reserve("ord_1", [item("MUG-01", 3)])
    store.close()
    reopened = InventoryStore.open(db_path)
    try:
        assert reopened.get_reservation("ord_1") == held
        assert available(reopened, "MUG-01") == 7
    finally:
        reopened.close()


def test_database_refuses_negative_stock(store: InventoryStore, db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            raw.execute("UPDATE products SET held = on_hand + 1 WHERE sku = 'MUG-01'")
    finally:
        raw.close()


def test_concurrent_reservations_never_oversell(store: InventoryStore, db_path: Path) -> None:
    # Separate connections on one file, as separate processes would have, plus threads sharing
    # one store: SQLite's write lock and the store's lock must both serialize the check+hold.
    stores = [store, InventoryStore.open(db_path), InventoryStore.open(db_path)]
    start = threading.Barrier(12)

    def attempt(n: int) -> str:
        start.wait()
        try:
            stores[n % len(stores)].reserve(f"ord_{n}", [item("TSHIRT-01", 1)])
        except DomainError as error:
            return error.reason
        return "HELD"

    try:
        with ThreadPoolExecutor(max_workers=12) as pool:
            outcomes = list(pool.map(attempt, range(12)))
    finally:
        for extra in stores[1:]:
            extra.close()
    assert Counter(outcomes) == {"HELD": 5, "INSUFFICIENT_STOCK": 7}
    tshirt = store.get_product("TSHIRT-01")
    assert (tshirt.held, tshirt.available) == (5, 0)
