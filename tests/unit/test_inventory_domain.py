"""Inventory domain rules, validation and the seed catalog: pure functions, no database."""

from __future__ import annotations

import pytest

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from services.common.paging import Cursors
from services.inventory import domain
from services.inventory.catalog import parse_catalog, seed_catalog
from services.inventory.domain import (
    Product,
    Reservation,
    ReservationItem,
    ReservationStatus,
    StockChange,
)
from tests.support.samples import CATALOG, T0, item, reserved, usd


def reservation(status: ReservationStatus, *items: ReservationItem) -> Reservation:
    """A reservation of `items`, each at one dollar a unit."""
    lines = tuple(reserved(i.sku, i.quantity, 100) for i in items)
    return Reservation("ord_1", lines, status, T0, T0)


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


def test_page_request_decodes_the_sku_cursor_and_defaults_size() -> None:
    assert domain.page_request(0, domain.CURSORS.token(("MUG-01",))) == ("MUG-01", 50)


def test_first_page_request_starts_before_every_sku() -> None:
    assert domain.page_request(7, "") == (None, 7)


def test_page_request_refuses_a_token_of_another_list_rpc() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.page_request(0, Cursors("ListOrders", (str,)).token(("MUG-01",)))
    assert [v.field for v in raised.value.violations] == ["page_token"]


# --- rules ---------------------------------------------------------------------------------------


def test_available_is_on_hand_minus_held() -> None:
    assert Product("A", "a", "", usd(1), on_hand=10, held=4).available == 6


def test_replay_with_same_items_in_any_order_returns_existing() -> None:
    existing = reservation(ReservationStatus.HELD, item("A", 1), item("B", 2))
    assert domain.replay(existing, [item("B", 2), item("A", 1)]) is existing


def test_replay_compares_quantities_not_prices() -> None:
    # A request carries no prices: the reservation's own are never a difference.
    existing = Reservation("ord_1", (reserved("A", 1, 999),), ReservationStatus.HELD, T0, T0)
    assert domain.replay(existing, [item("A", 1)]) is existing


def test_new_reservation_lines_carry_each_products_current_price() -> None:
    products = {p.sku: p for p in CATALOG}
    assert domain.priced([item("TSHIRT-01", 2), item("MUG-01", 1)], products) == (
        reserved("TSHIRT-01", 2, 2499),
        reserved("MUG-01", 1, 1299),
    )


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
    assert parse_catalog({"products": [entry()]}) == [Product("A", "a", "", usd(100), on_hand=1)]


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
        parse_catalog(document)
