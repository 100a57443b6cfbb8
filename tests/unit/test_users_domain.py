"""Users domain and store: validation, normalisation, idempotent creation, durability."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.users.domain import (
    MAX_DISPLAY_NAME_LENGTH,
    SIGN_UP_THROTTLED,
    USER_ID_PREFIX,
    Users,
    is_valid_email,
    normalize_email,
    validate_new_user,
)
from services.users.store import MIGRATIONS, SqlUserStore
from services.users.throttle import SignInLimits, ThrottlePolicy
from tests.support.databases import count_rows, schema_version

NOW = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


@pytest.fixture
def db_path(db_location: Path | str) -> Path | str:
    return db_location


@pytest.fixture
async def store(db_path: Path | str) -> AsyncIterator[SqlUserStore]:
    store = await SqlUserStore.open(db_path)
    yield store
    await store.close()


@pytest.fixture
def users(store: SqlUserStore) -> Users:
    return Users(store, clock=lambda: NOW)


def violation_fields(error: InvalidArgument) -> list[str]:
    return [violation.field for violation in error.violations]


def test_normalize_email_trims_and_lower_cases() -> None:
    assert normalize_email("  Ada.Lovelace@Example.COM \n") == "ada.lovelace@example.com"


@pytest.mark.parametrize(
    "email",
    [
        "ada@example.com",
        "ada.lovelace+shop@mail.example.co.uk",
        "o'brien@example.ie",
        "a@b.io",
        "user@xn--bcher-kva.example",
        "user@example.xn--p1ai",
    ],
)
def test_valid_email_is_accepted(email: str) -> None:
    assert is_valid_email(email)


@pytest.mark.parametrize(
    "email",
    [
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "ada@@example.com",
        "ada@exa mple.com",
        "ada lovelace@example.com",
        ".ada@example.com",
        "ada.@example.com",
        "ada..lovelace@example.com",
        "ada@-example.com",
        "ada@example-.com",
        "ada@example..com",
        "ada@example.c",
        "ada@example.123",
        '"ada"@example.com',
        "ada@[127.0.0.1]",
        "user@xn--bcher-kva",
        "a" * 65 + "@example.com",
    ],
)
def test_malformed_email_is_rejected(email: str) -> None:
    assert not is_valid_email(email)


def test_validate_new_user_normalises_email_and_trims_display_name() -> None:
    new = validate_new_user("req-1", " Ada@Example.com ", "  Ada Lovelace ")
    assert (new.request_id, new.email, new.display_name) == (
        "req-1",
        "ada@example.com",
        "Ada Lovelace",
    )


def test_empty_email_is_reported_as_empty() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("", "   ", "Ada")
    assert raised.value.violations == [FieldViolation("email", "must not be empty")]


def test_too_long_email_is_reported_once_as_too_long() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("", "a" * 60 + "@" + "b" * 200 + ".com", "Ada")
    assert raised.value.violations == [FieldViolation("email", "must be at most 254 characters")]


def test_display_name_may_be_empty() -> None:
    assert validate_new_user("", "ada@example.com", "").display_name == ""


def test_display_name_at_the_limit_is_accepted() -> None:
    name = "x" * MAX_DISPLAY_NAME_LENGTH
    assert validate_new_user("", "ada@example.com", name).display_name == name


def test_too_long_display_name_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("", "ada@example.com", "x" * (MAX_DISPLAY_NAME_LENGTH + 1))
    assert violation_fields(raised.value) == ["display_name"]


def test_display_name_with_control_character_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("", "ada@example.com", "Ada\nLovelace")
    assert raised.value.violations == [
        FieldViolation("display_name", "must not contain control characters")
    ]


def test_display_name_with_emoji_joiner_is_accepted() -> None:
    name = "Ada \U0001f469\u200d\U0001f4bb"
    assert validate_new_user("", "ada@example.com", name).display_name == name


def test_too_long_request_id_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("r" * 256, "ada@example.com", "Ada")
    assert violation_fields(raised.value) == ["request_id"]


def test_every_bad_field_is_reported_together() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("r" * 256, "not-an-email", "x" * 101)
    assert violation_fields(raised.value) == ["email", "display_name", "request_id"]


async def test_create_returns_user_with_normalised_email_and_clock_time(users: Users) -> None:
    user = await users.create("", " Ada@Example.com", "Ada")
    assert user.user_id.startswith(USER_ID_PREFIX)
    assert len(user.user_id) == len(USER_ID_PREFIX) + 32
    assert (user.email, user.display_name, user.create_time) == ("ada@example.com", "Ada", NOW)


async def test_get_returns_created_user(users: Users) -> None:
    user = await users.create("", "ada@example.com", "Ada")
    assert await users.get(user.user_id, user.user_id) == user


async def test_same_request_id_and_email_returns_the_same_user(users: Users) -> None:
    first = await users.create("req-1", "ada@example.com", "Ada")
    again = await users.create("req-1", "ADA@example.com ", "Ada")
    assert again == first


async def test_same_request_id_with_different_email_is_key_reuse(users: Users) -> None:
    await users.create("req-1", "ada@example.com", "Ada")
    with pytest.raises(AlreadyExists) as raised:
        await users.create("req-1", "grace@example.com", "Ada")
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"request_id": "req-1"}


async def test_same_request_id_with_different_display_name_is_key_reuse(users: Users) -> None:
    await users.create("req-1", "ada@example.com", "Ada")
    with pytest.raises(AlreadyExists) as raised:
        await users.create("req-1", "ada@example.com", "Countess")
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_taken_email_with_new_request_id_is_email_taken(users: Users) -> None:
    await users.create("req-1", "ada@example.com", "Ada")
    with pytest.raises(AlreadyExists) as raised:
        await users.create("req-2", "Ada@Example.com", "Ada")
    assert raised.value.reason == "EMAIL_TAKEN"
    assert raised.value.metadata == {"email": "ada@example.com"}


async def test_taken_email_without_request_id_is_email_taken(users: Users) -> None:
    await users.create("", "ada@example.com", "Ada")
    with pytest.raises(AlreadyExists) as raised:
        await users.create("", "ada@example.com", "Ada")
    assert raised.value.reason == "EMAIL_TAKEN"


async def test_email_taken_attempt_does_not_create_a_user(
    users: Users, db_path: Path | str
) -> None:
    await users.create("", "ada@example.com", "Ada")
    with pytest.raises(AlreadyExists):
        await users.create("req-2", "ada@example.com", "Ada")
    assert count_rows(db_path, "SELECT COUNT(*) FROM users") == 1


def throttled_sign_ups(store: SqlUserStore, free_refusals: int) -> Users:
    limits = SignInLimits(sign_up=ThrottlePolicy(free_failures=free_refusals))
    return Users(store, clock=lambda: NOW, limits=limits)


async def test_refused_sign_ups_from_one_address_are_throttled_there_only(
    store: SqlUserStore, db_path: Path | str
) -> None:
    users = throttled_sign_ups(store, free_refusals=2)
    await users.create("", "ada@example.com", "Ada")
    office = "203.0.113.7"
    for _ in range(2):
        with pytest.raises(AlreadyExists):
            await users.create("", "ada@example.com", "Ada?", source_address=office)
    with pytest.raises(ResourceExhausted) as throttled:
        await users.create("", "grace@example.com", "Grace", source_address=office)
    assert (throttled.value.reason, throttled.value.retry_after_seconds) == (SIGN_UP_THROTTLED, 1)
    assert count_rows(db_path, "SELECT COUNT(*) FROM users") == 1
    # Another address, and a caller without one, still get their answer.
    for elsewhere in ("198.51.100.1", None):
        with pytest.raises(AlreadyExists) as taken:
            await users.create("", "ada@example.com", "Ada?", source_address=elsewhere)
        assert taken.value.reason == "EMAIL_TAKEN"


async def test_created_accounts_and_retries_do_not_count_against_their_address(
    store: SqlUserStore,
) -> None:
    users = throttled_sign_ups(store, free_refusals=2)
    office = "203.0.113.7"
    for n in range(5):
        await users.create(f"req-{n}", f"customer{n}@example.com", "", source_address=office)
        await users.create(f"req-{n}", f"customer{n}@example.com", "", source_address=office)
    with pytest.raises(AlreadyExists) as taken:
        await users.create("", "customer0@example.com", "", source_address=office)
    assert taken.value.reason == "EMAIL_TAKEN"


async def test_get_unknown_user_is_user_not_found(users: Users) -> None:
    with pytest.raises(NotFound) as raised:
        await users.get("usr_missing", "usr_missing")
    assert raised.value.reason == "USER_NOT_FOUND"
    assert raised.value.metadata == {"user_id": "usr_missing"}


async def test_get_with_empty_id_returns_the_caller(users: Users) -> None:
    user = await users.create("", "ada@example.com", "Ada")
    assert await users.get(user.user_id, "") == user


async def test_get_of_another_user_is_not_found_like_an_unknown_id(users: Users) -> None:
    ada = await users.create("", "ada@example.com", "Ada")
    grace = await users.create("", "grace@example.com", "Grace")
    with pytest.raises(NotFound) as other:
        await users.get(ada.user_id, grace.user_id)
    with pytest.raises(NotFound) as unknown:
        await users.get(ada.user_id, "usr_missing")
    assert (other.value.reason, other.value.message) == (
        unknown.value.reason,
        unknown.value.message.replace("usr_missing", grace.user_id),
    )
    assert other.value.metadata == {"user_id": grace.user_id}


async def test_user_survives_a_restart_with_exact_create_time(
    users: Users, db_path: Path | str
) -> None:
    user = await users.create("", "ada@example.com", "Ada")
    reopened = await SqlUserStore.open(db_path)
    try:
        assert await Users(reopened).get(user.user_id, user.user_id) == user
    finally:
        await reopened.close()


async def test_request_id_is_remembered_across_a_restart(users: Users, db_path: Path | str) -> None:
    user = await users.create("req-1", "ada@example.com", "Ada")
    reopened = await SqlUserStore.open(db_path)
    try:
        assert await Users(reopened).create("req-1", "ada@example.com", "Ada") == user
    finally:
        await reopened.close()


async def test_store_records_its_schema_version(store: SqlUserStore, db_path: Path | str) -> None:
    assert schema_version(db_path) == len(MIGRATIONS)
