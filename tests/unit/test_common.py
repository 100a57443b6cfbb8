"""Unit tests for the shared plumbing in services/common: configuration, paging tokens, money,
time and contract conversions, SQLite migrations and the domain-error -> gRPC status mapping."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.clock import EPOCH, from_micros, now_micros, to_micros, utc_now
from services.common.config import ConfigError, ServiceConfig, env_seconds, load_config
from services.common.convert import (
    micros_to_timestamp,
    money_from_proto,
    money_to_proto,
    to_timestamp,
)
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
from services.common.money import Money, is_currency_code
from services.common.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    checked_page,
    decode_token,
    encode_token,
    page_size,
)
from services.common.sqlite import open_database, transaction
from services.common.status import (
    error_info,
    field_violations,
    internal_status,
    precondition_violations,
    to_grpc_status,
)
from shop.common.v1 import money_pb2

# --- config -----------------------------------------------------------------------------------


def test_config_defaults_to_the_service_port_and_a_file_under_var() -> None:
    config = load_config("inventory", env={})

    assert config == ServiceConfig(
        service="inventory",
        listen="127.0.0.1:50052",
        db_path=Path("var/data/inventory.db"),
        upstreams={},
        grace_seconds=5.0,
        log_level="INFO",
    )


def test_config_reads_every_variable() -> None:
    env = {
        "SHOPMESH_LISTEN": "unix:/run/shopmesh/orders.sock",
        "SHOPMESH_DB_PATH": "/data/orders.db",
        "SHOPMESH_UPSTREAM_USERS": "unix:/run/shopmesh/egress.sock",
        "SHOPMESH_UPSTREAM_PAYMENTS": "[::1]:7000",
        "SHOPMESH_GRACE_SECONDS": "2.5",
        "SHOPMESH_LOG_LEVEL": "debug",
    }

    config = load_config("orders", ("users", "payments"), env=env)

    assert config.listen == "unix:/run/shopmesh/orders.sock"
    assert config.db_path == Path("/data/orders.db")
    assert config.upstream("users") == "unix:/run/shopmesh/egress.sock"
    assert config.upstream("payments") == "[::1]:7000"
    assert config.grace_seconds == 2.5
    assert config.log_level == "DEBUG"


def test_config_gives_each_unset_upstream_its_default_port() -> None:
    config = load_config("orders", ("users", "notifications"), env={})

    assert config.upstreams == {"users": "127.0.0.1:50051", "notifications": "127.0.0.1:50055"}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SHOPMESH_LISTEN", "garbage", "expected unix:/path/to.sock or host:port"),
        ("SHOPMESH_LISTEN", "unix:", "needs a path"),
        ("SHOPMESH_LISTEN", "127.0.0.1:99999", "host:port"),
        ("SHOPMESH_LISTEN", "http://127.0.0.1:80", "host:port"),
        ("SHOPMESH_UPSTREAM_USERS", "users", "host:port"),
        ("SHOPMESH_GRACE_SECONDS", "soon", "number of seconds"),
        ("SHOPMESH_GRACE_SECONDS", "-1", ">= 0"),
        ("SHOPMESH_LOG_LEVEL", "LOUD", "DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_config_error_names_the_variable_and_the_expected_form(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("orders", ("users",), env={variable: value})

    assert variable in str(raised.value)
    assert expected in str(raised.value)


def test_config_refuses_a_directory_as_the_database_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SHOPMESH_DB_PATH"):
        load_config("users", env={"SHOPMESH_DB_PATH": str(tmp_path)})


def test_config_refuses_an_unknown_service_or_upstream() -> None:
    with pytest.raises(ConfigError, match="unknown service 'shipping'"):
        load_config("shipping", env={})
    with pytest.raises(ConfigError, match="unknown upstream 'shipping'"):
        load_config("orders", ("shipping",), env={})


def test_asking_for_an_unconfigured_upstream_names_its_variable() -> None:
    config = load_config("users", env={})

    with pytest.raises(ConfigError, match="SHOPMESH_UPSTREAM_INVENTORY"):
        config.upstream("inventory")


def test_env_seconds_reads_a_service_setting_and_names_it_when_malformed() -> None:
    env = {"SHOPMESH_RELAY_INTERVAL": "0.25", "SHOPMESH_RETRY_SECONDS": "x"}

    assert env_seconds(env, "RELAY_INTERVAL", 1.0) == 0.25
    assert env_seconds(env, "UNSET", 1.0) == 1.0
    with pytest.raises(ConfigError, match="SHOPMESH_RETRY_SECONDS"):
        env_seconds(env, "RETRY_SECONDS", 1.0)
    with pytest.raises(ConfigError, match="SHOPMESH_RELAY_INTERVAL"):
        env_seconds(env, "RELAY_INTERVAL", 1.0, minimum=1.0)


# --- paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [(0, DEFAULT_PAGE_SIZE), (7, 7), (10**6, 500)])
def test_page_size_defaults_and_caps(requested: int, expected: int) -> None:
    assert page_size(requested) == expected
    assert expected <= MAX_PAGE_SIZE


def test_negative_page_size_is_a_violation_on_page_size() -> None:
    with pytest.raises(InvalidArgument) as raised:
        page_size(-1)

    assert [v.field for v in raised.value.violations] == ["page_size"]


@pytest.mark.parametrize("offset", [0, 1, 50, 123_456_789])
def test_page_token_round_trips(offset: int) -> None:
    assert decode_token(encode_token(offset)) == offset


def test_empty_page_token_is_the_first_page() -> None:
    assert decode_token("") == 0


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        encode_token(40)[:-2],
        _b64("x:40"),
        _b64("o:-1"),
        _b64("o:forty"),
        _b64("o:"),
        base64.urlsafe_b64encode(b"o:\xff").decode(),
        # Too large for SQLite's OFFSET: must be refused here, not fail later as INTERNAL.
        _b64(f"o:{2**63}"),
    ],
)
def test_tampered_page_token_is_invalid_argument_on_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        decode_token(token)

    assert [v.field for v in raised.value.violations] == ["page_token"]


def test_checked_page_reads_a_valid_request() -> None:
    check = Validator()

    assert checked_page(check, 0, encode_token(100)) == (DEFAULT_PAGE_SIZE, 100)
    assert check.violations == []


def test_checked_page_adds_every_paging_violation_to_the_callers_own() -> None:
    check = Validator()
    check.require(False, "user_id", "must not be empty")

    assert checked_page(check, -1, "not-a-token") == (0, 0)
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


def test_micros_to_timestamp_matches_the_datetime_timestamp() -> None:
    micros = 1_700_000_000_123_456

    assert micros_to_timestamp(micros) == to_timestamp(from_micros(micros))


def test_money_round_trips_through_the_contract_message() -> None:
    wire = money_to_proto(Money("EUR", 1999))

    assert wire == money_pb2.Money(currency_code="EUR", minor_units=1999)
    assert money_from_proto(wire) == Money("EUR", 1999)


# --- sqlite -----------------------------------------------------------------------------------

MIGRATIONS = [
    "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT NOT NULL);",
    """
    CREATE TABLE events (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL REFERENCES items(id));
    CREATE TRIGGER item_added AFTER INSERT ON items BEGIN
        INSERT INTO events (item_id) VALUES (new.id);
    END;
    """,
]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.db"


def _version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA user_version").fetchone()[0]
    return version


@pytest.fixture
def opened(database: Path) -> Iterator[sqlite3.Connection]:
    with closing(open_database(database, MIGRATIONS)) as connection:
        yield connection


def test_open_database_creates_the_file_and_applies_every_migration(
    opened: sqlite3.Connection, database: Path
) -> None:
    assert database.exists()
    assert _version(opened) == len(MIGRATIONS)
    with transaction(opened):
        opened.execute("INSERT INTO items VALUES ('mug', 'Mug')")
    assert [row["item_id"] for row in opened.execute("SELECT item_id FROM events")] == ["mug"]


def test_open_database_is_durable_wal(opened: sqlite3.Connection) -> None:
    assert opened.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert opened.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert opened.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopening_an_up_to_date_database_changes_nothing(database: Path) -> None:
    with closing(open_database(database, MIGRATIONS)) as connection, transaction(connection):
        connection.execute("INSERT INTO items VALUES ('mug', 'Mug')")

    # Re-running migration 0 would fail (the table exists), so this also proves it is skipped.
    with closing(open_database(database, MIGRATIONS)) as connection:
        assert _version(connection) == len(MIGRATIONS)
        assert [row["id"] for row in connection.execute("SELECT id FROM items")] == ["mug"]


def test_a_new_migration_runs_once_on_an_older_database(database: Path) -> None:
    with closing(open_database(database, MIGRATIONS[:1])) as connection:
        assert _version(connection) == 1

    with closing(open_database(database, MIGRATIONS)) as connection:
        assert _version(connection) == 2
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_database_from_newer_code_is_refused(database: Path) -> None:
    open_database(database, MIGRATIONS).close()

    with pytest.raises(RuntimeError, match="schema version 2, newer than this code knows \\(1\\)"):
        open_database(database, MIGRATIONS[:1])


def test_a_failing_migration_leaves_the_previous_version_intact(database: Path) -> None:
    broken = [MIGRATIONS[0], "CREATE TABLE half (id INTEGER);\nINSERT INTO nowhere VALUES (1);"]

    with pytest.raises(sqlite3.OperationalError, match="no such table: nowhere"):
        open_database(database, broken)

    with closing(sqlite3.connect(database)) as connection:
        assert _version(connection) == 1
        tables = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        assert [name for (name,) in tables] == ["items"]


def test_an_incomplete_migration_statement_is_reported(database: Path) -> None:
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        open_database(database, ["CREATE TABLE items (id TEXT"])


def _insert_then_fail(connection: sqlite3.Connection) -> None:
    with transaction(connection):
        connection.execute("INSERT INTO items VALUES ('mug', 'Mug')")
        raise KeyError("boom")


def test_transaction_rolls_back_on_error(opened: sqlite3.Connection) -> None:
    with pytest.raises(KeyError):
        _insert_then_fail(opened)

    assert opened.execute("SELECT count(*) FROM items").fetchone()[0] == 0


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
