"""Unit tests for the shared plumbing in services/common: paging tokens, money, time and
contract conversions, the domain-error -> gRPC status mapping and throttled log lines
(configuration has tests/unit/test_config.py, the database tests/unit/test_database.py)."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from services.common.clock import EPOCH, from_micros, now_micros, to_micros, utc_now
from services.common.convert import from_timestamp, money_from_proto, money_to_proto, to_timestamp
from services.common.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
    Unavailable,
    Validator,
)
from services.common.logs import ThrottledLog
from services.common.money import Money, is_currency_code
from services.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Cursors, page_size
from services.common.status import (
    error_info,
    field_violations,
    internal_status,
    precondition_violations,
    to_grpc_status,
)
from shop.common.v1 import money_pb2

# --- paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [(0, DEFAULT_PAGE_SIZE), (7, 7), (10**6, 500)])
def test_page_size_defaults_and_caps(requested: int, expected: int) -> None:
    assert page_size(requested) == expected
    assert expected <= MAX_PAGE_SIZE


def test_negative_page_size_is_a_violation_on_page_size() -> None:
    with pytest.raises(InvalidArgument) as raised:
        page_size(-1)

    assert [v.field for v in raised.value.violations] == ["page_size"]


ORDERS = Cursors("ListOrders", (datetime, str))
PRODUCTS = Cursors("ListProducts", (str,))
SEQUENCES = Cursors("ListNotifications", (int,))


@pytest.mark.parametrize(
    ("cursors", "key"),
    [
        (PRODUCTS, ("MUG-01",)),
        (PRODUCTS, ("ÜBER-Ärmel:1",)),
        (SEQUENCES, (0,)),
        (SEQUENCES, (2**63 - 1,)),
        (ORDERS, (datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC), "ord_1")),
        (ORDERS, (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "")),
    ],
)
def test_cursor_token_round_trips(cursors: Cursors, key: tuple[int | str | datetime, ...]) -> None:
    assert cursors.key(cursors.token(key)) == key


def test_empty_page_token_is_the_first_page() -> None:
    assert ORDERS.key("") is None


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("cursors", "token"),
    [
        (SEQUENCES, "not a token"),
        (SEQUENCES, SEQUENCES.token((40,))[:-2]),
        (SEQUENCES, _b64("[40]")),
        (SEQUENCES, _b64('{"ListNotifications": 40}')),
        (SEQUENCES, _b64('["ListNotifications"]')),
        (SEQUENCES, _b64('["ListNotifications", 40, 41]')),
        (SEQUENCES, _b64('["ListNotifications", "forty"]')),
        (SEQUENCES, _b64('["ListNotifications", true]')),
        (SEQUENCES, _b64('["ListNotifications", 4.0]')),
        (SEQUENCES, base64.urlsafe_b64encode(b'["ListNotifications", "\xff"]').decode()),
        # Too large for SQLite to bind: must be refused here, not fail later as INTERNAL.
        (SEQUENCES, _b64(f'["ListNotifications", {2**63}]')),
        (SEQUENCES, _b64("[" * 5000)),
        # Microseconds beyond year 9999 are no datetime: refused, not an OverflowError later.
        (ORDERS, _b64('["ListOrders", 253402300800000000, "ord_1"]')),
        (ORDERS, _b64('["ListOrders", 1700000000000000, 7]')),
    ],
)
def test_tampered_page_token_is_invalid_argument_on_page_token(
    cursors: Cursors, token: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        cursors.key(token)

    assert raised.value.message == "page_token is not one this service issued"
    assert raised.value.violations == [
        FieldViolation("page_token", "pass back a next_page_token unchanged")
    ]


def test_a_token_of_one_list_rpc_is_refused_by_another() -> None:
    token = Cursors("ListNotifications", (str,)).token(("MUG-01",))

    with pytest.raises(InvalidArgument) as raised:
        PRODUCTS.key(token)

    assert [v.field for v in raised.value.violations] == ["page_token"]


def test_a_key_that_does_not_fit_the_shape_is_a_bug() -> None:
    with pytest.raises(ValueError, match="cursor"):
        PRODUCTS.token((7,))
    with pytest.raises(ValueError, match="does not match"):
        PRODUCTS.token(("A", "B"))


def test_checked_page_reads_a_valid_request() -> None:
    check = Validator()

    assert SEQUENCES.checked_page(check, 0, SEQUENCES.token((100,))) == (DEFAULT_PAGE_SIZE, (100,))
    assert check.violations == []


def test_checked_page_adds_every_paging_violation_to_the_callers_own() -> None:
    check = Validator()
    check.require(False, "user_id", "must not be empty")

    assert SEQUENCES.checked_page(check, -1, "not-a-token") == (0, None)
    assert [v.field for v in check.violations] == ["user_id", "page_size", "page_token"]


# --- money ------------------------------------------------------------------------------------


def test_money_adds_within_one_currency() -> None:
    assert Money("USD", 1999) + Money("USD", 1) == Money("USD", 2000)


def test_money_refuses_to_add_different_currencies() -> None:
    with pytest.raises(ValueError, match="cannot add EUR to USD"):
        _ = Money("USD", 1) + Money("EUR", 1)


def test_money_times_a_quantity_is_a_line_total() -> None:
    assert Money("JPY", 350).times(3) == Money("JPY", 1050)


def test_money_sums_from_zero() -> None:
    prices = [Money("EUR", 250), Money("EUR", 199)]

    total = Money.zero("EUR")
    for price in prices:
        total = total + price

    assert total == Money("EUR", 449)


def test_money_is_immutable() -> None:
    price = Money("USD", 100)

    with pytest.raises(AttributeError):
        price.minor_units = 1  # type: ignore[misc]


@pytest.mark.parametrize(("code", "valid"), [("USD", True), ("usd", False), ("US", False)])
def test_currency_codes_are_three_upper_case_letters(code: str, valid: bool) -> None:
    assert is_currency_code(code) is valid


# --- clock and contract conversions -----------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        EPOCH,
        datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_micros_round_trip_keeps_every_microsecond(moment: datetime) -> None:
    assert from_micros(to_micros(moment)) == moment
    assert to_timestamp(moment).ToMicroseconds() == to_micros(moment)


def test_micros_of_a_non_utc_moment_are_those_of_its_utc_instant() -> None:
    paris = timezone(timedelta(hours=1))

    assert to_micros(datetime(2025, 1, 1, 13, tzinfo=paris)) == to_micros(
        datetime(2025, 1, 1, 12, tzinfo=UTC)
    )


def test_from_micros_is_utc_aware() -> None:
    assert from_micros(1_700_000_000_000_001).tzinfo is UTC


def test_the_clocks_read_the_current_utc_time() -> None:
    before = to_micros(utc_now())
    micros = now_micros()
    after = to_micros(utc_now())

    assert before <= micros <= after


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_from_timestamp_is_the_inverse_of_to_timestamp(moment: datetime) -> None:
    assert from_timestamp(to_timestamp(moment)) == moment
    assert from_timestamp(to_timestamp(moment)).tzinfo is UTC


@pytest.mark.parametrize(
    ("timestamp", "problem"),
    [
        (Timestamp(seconds=253_402_300_800), "must be between years 1 and 9999"),
        (Timestamp(seconds=-62_135_596_801), "must be between years 1 and 9999"),
        (Timestamp(seconds=0, nanos=-1), "must have nanos between 0 and 999999999"),
        (Timestamp(seconds=0, nanos=1_000_000_000), "must have nanos between 0 and 999999999"),
    ],
)
def test_from_timestamp_refuses_what_no_datetime_can_hold(
    timestamp: Timestamp, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        from_timestamp(timestamp)


def test_money_round_trips_through_the_contract_message() -> None:
    wire = money_to_proto(Money("EUR", 1999))

    assert wire == money_pb2.Money(currency_code="EUR", minor_units=1999)
    assert money_from_proto(wire) == Money("EUR", 1999)


# --- errors -----------------------------------------------------------------------------------


def _failed_call(status: grpc.Status) -> aio.AioRpcError:
    """What a client sees when a server aborts with `status`."""
    return aio.AioRpcError(
        status.code, aio.Metadata(), aio.Metadata(*status.trailing_metadata), status.details
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("no such user"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("email taken"), grpc.StatusCode.ALREADY_EXISTS),
        (FailedPrecondition("out of stock"), grpc.StatusCode.FAILED_PRECONDITION),
        (Unavailable("inventory down"), grpc.StatusCode.UNAVAILABLE),
        (DomainError("unclassified"), grpc.StatusCode.UNKNOWN),
    ],
)
def test_each_domain_error_maps_to_its_status_code(
    error: DomainError, code: grpc.StatusCode
) -> None:
    status = to_grpc_status(error)

    assert status.code == code
    assert status.details == error.message


def test_error_info_round_trips_through_the_status() -> None:
    error = AlreadyExists(
        "idempotency key reused", reason="IDEMPOTENCY_KEY_REUSED", metadata={"key": "k-1"}
    )

    info = error_info(_failed_call(to_grpc_status(error)))

    assert info is not None
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "IDEMPOTENCY_KEY_REUSED",
        ERROR_DOMAIN,
        {"key": "k-1"},
    )


def test_bad_request_field_violations_round_trip_through_the_status() -> None:
    validator = Validator()
    validator.require(False, "email", "must contain @")
    validator.require(True, "name", "must not be empty")
    validator.require(False, "items[0].quantity", "must be > 0")
    with pytest.raises(InvalidArgument) as raised:
        validator.raise_if_invalid("invalid CreateUser request")
    call = _failed_call(to_grpc_status(raised.value))

    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert call.details() == "invalid CreateUser request"
    assert field_violations(call) == [
        FieldViolation("email", "must contain @"),
        FieldViolation("items[0].quantity", "must be > 0"),
    ]
    info = error_info(call)
    assert info is not None
    assert info.reason == "INVALID_ARGUMENT"


def test_precondition_failure_violations_round_trip_through_the_status() -> None:
    error = FailedPrecondition(
        "not enough stock",
        reason="INSUFFICIENT_STOCK",
        violations=[PreconditionViolation("STOCK", "sku:MUG-01", "2 requested, 1 available")],
    )

    call = _failed_call(to_grpc_status(error))

    assert call.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_violations(call) == [
        PreconditionViolation("STOCK", "sku:MUG-01", "2 requested, 1 available")
    ]
    assert field_violations(call) == []


def test_errors_without_violations_send_no_bad_request() -> None:
    call = _failed_call(to_grpc_status(NotFound("no such user", reason="USER_NOT_FOUND")))

    assert field_violations(call) == []
    info = error_info(call)
    assert info is not None
    assert info.reason == "USER_NOT_FOUND"


def test_internal_status_hides_the_cause() -> None:
    call = _failed_call(internal_status())

    assert call.code() == grpc.StatusCode.INTERNAL
    assert call.details() == "internal error; see the service log"
    info = error_info(call)
    assert info is not None
    assert info.reason == "INTERNAL"


# --- throttled log lines ----------------------------------------------------------------------


class _Seconds:
    """A monotonic clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _throttled(caplog: pytest.LogCaptureFixture) -> tuple[ThrottledLog, _Seconds]:
    caplog.set_level(logging.INFO, "throttled")
    clock = _Seconds()
    return ThrottledLog(logging.getLogger("throttled"), interval=1.0, clock=clock), clock


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int | None]]:
    return [(r.__dict__["reason"], r.__dict__.get("suppressed")) for r in caplog.records]


def test_a_reason_is_one_line_a_second_and_the_next_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttled, clock = _throttled(caplog)
    logged = [throttled.log(logging.WARNING, "BAD", "bad request") for _ in range(5)]
    clock.now += 0.999
    logged.append(throttled.log(logging.WARNING, "BAD", "bad request"))
    clock.now += 0.001
    logged.append(throttled.log(logging.WARNING, "BAD", "bad request"))
    clock.now += 5
    logged.append(throttled.log(logging.WARNING, "BAD", "bad request"))

    assert logged == [True, False, False, False, False, False, True, True]
    assert _lines(caplog) == [("BAD", None), ("BAD", 5), ("BAD", None)]


def test_reasons_are_throttled_apart(caplog: pytest.LogCaptureFixture) -> None:
    throttled, _ = _throttled(caplog)
    for reason in ("BAD", "WORSE", "BAD", "WORSE"):
        throttled.log(logging.WARNING, reason, "refused", extra={"method": "/x.Y/Z"})

    assert _lines(caplog) == [("BAD", None), ("WORSE", None)]
    assert caplog.records[0].__dict__["method"] == "/x.Y/Z"


def test_a_line_below_the_level_is_neither_logged_nor_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttled, _ = _throttled(caplog)
    assert not throttled.log(logging.DEBUG, "BAD", "bad request")
    assert throttled.log(logging.WARNING, "BAD", "bad request")

    assert _lines(caplog) == [("BAD", None)]
