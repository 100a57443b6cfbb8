"""UsersService over a real grpc.aio server on a temporary Unix socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import grpc
import pytest
from grpc import aio

from services.common.errors import ERROR_DOMAIN
from services.common.status import field_violations
from services.users.app import build
from shop.users.v1 import users_pb2, users_pb2_grpc
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS
from tests.support.db_locks import WriteWatch, serves_while_a_write_waits
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner

pytestmark = ON_BOTH_BACKENDS

Channels = Callable[[str], aio.Channel]
# The async stub class exists only in the generated .pyi, hence the string.
Stub: TypeAlias = "users_pb2_grpc.UsersServiceAsyncStub"


@pytest.fixture
async def users(services: ServiceRunner, channels: Channels) -> Stub:
    running = await services.start("users", build)
    return users_pb2_grpc.UsersServiceStub(channels(running.address))


async def test_created_user_can_be_fetched(users: Stub) -> None:
    created = await users.CreateUser(
        users_pb2.CreateUserRequest(email=" Ada@Example.com ", display_name="Ada Lovelace")
    )
    assert created.user.user_id.startswith("usr_")
    assert (created.user.email, created.user.display_name) == ("ada@example.com", "Ada Lovelace")
    assert created.user.create_time.seconds > 0

    fetched = await users.GetUser(
        users_pb2.GetUserRequest(user_id=created.user.user_id),
        metadata=as_user(created.user.user_id),
    )
    assert fetched.user == created.user


async def test_creating_a_taken_email_is_already_exists_email_taken(
    users: Stub,
) -> None:
    await users.CreateUser(users_pb2.CreateUserRequest(email="ada@example.com"))
    with pytest.raises(aio.AioRpcError) as raised:
        await users.CreateUser(users_pb2.CreateUserRequest(email="ADA@example.com"))
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "EMAIL_TAKEN",
        ERROR_DOMAIN,
        {"email": "ada@example.com"},
    )


async def test_retry_with_same_request_id_returns_the_same_user(
    users: Stub,
) -> None:
    request = users_pb2.CreateUserRequest(
        request_id="6c1f0a52-req", email="ada@example.com", display_name="Ada"
    )
    first = await users.CreateUser(request)
    again = await users.CreateUser(request)
    assert again.user == first.user


async def test_request_id_reused_for_another_email_is_key_reuse(
    users: Stub,
) -> None:
    await users.CreateUser(users_pb2.CreateUserRequest(request_id="r-1", email="ada@example.com"))
    with pytest.raises(aio.AioRpcError) as raised:
        await users.CreateUser(
            users_pb2.CreateUserRequest(request_id="r-1", email="grace@example.com")
        )
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert (info.reason, dict(info.metadata)) == ("IDEMPOTENCY_KEY_REUSED", {"request_id": "r-1"})


async def test_malformed_email_is_invalid_argument_on_email(
    users: Stub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await users.CreateUser(users_pb2.CreateUserRequest(email="ada.example.com"))
    info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
    assert info.reason == "INVALID_ARGUMENT"
    assert [v.field for v in field_violations(raised.value)] == ["email"]


async def test_every_invalid_field_is_listed(
    users: Stub,
) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await users.CreateUser(users_pb2.CreateUserRequest(email="", display_name="x" * 101))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in field_violations(raised.value)] == [
        ("email", "must not be empty"),
        ("display_name", "must be at most 100 characters"),
    ]


async def test_unknown_user_is_not_found(users: Stub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await users.GetUser(
            users_pb2.GetUserRequest(user_id="usr_0000"), metadata=as_user("usr_0000")
        )
    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert (info.reason, dict(info.metadata)) == ("USER_NOT_FOUND", {"user_id": "usr_0000"})


async def test_empty_user_id_returns_the_caller(users: Stub) -> None:
    created = await users.CreateUser(users_pb2.CreateUserRequest(email="ada@example.com"))
    fetched = await users.GetUser(
        users_pb2.GetUserRequest(), metadata=as_user(created.user.user_id)
    )
    assert fetched.user == created.user


async def test_users_survive_a_restart(services: ServiceRunner, channels: Channels) -> None:
    running = await services.start("users", build)
    stub = users_pb2_grpc.UsersServiceStub(channels(running.address))
    created = await stub.CreateUser(
        users_pb2.CreateUserRequest(request_id="r-1", email="ada@example.com")
    )
    await services.stop(running)

    restarted = await services.start("users", build)
    stub = users_pb2_grpc.UsersServiceStub(channels(restarted.address))
    fetched = await stub.GetUser(
        users_pb2.GetUserRequest(user_id=created.user.user_id),
        metadata=as_user(created.user.user_id),
    )
    assert fetched.user == created.user
    replayed = await stub.CreateUser(
        users_pb2.CreateUserRequest(request_id="r-1", email="ada@example.com")
    )
    assert replayed.user == created.user


async def test_get_user_and_health_answer_while_a_create_waits_for_the_database_lock(
    services: ServiceRunner, channels: Channels, database_writes: WriteWatch
) -> None:
    running = await services.start("users", build)
    channel = channels(running.address)
    stub = users_pb2_grpc.UsersServiceStub(channel)
    ada = await stub.CreateUser(users_pb2.CreateUserRequest(email="ada@example.com"))

    created = await serves_while_a_write_waits(
        db_path=services.config("users").database,
        channel=channel,
        writes=database_writes,
        read=lambda: stub.GetUser(
            users_pb2.GetUserRequest(user_id=ada.user.user_id), metadata=as_user(ada.user.user_id)
        ),
        write=lambda: stub.CreateUser(users_pb2.CreateUserRequest(email="grace@example.com")),
    )

    assert created.user.email == "grace@example.com"
    fetched = await stub.GetUser(
        users_pb2.GetUserRequest(user_id=created.user.user_id),
        metadata=as_user(created.user.user_id),
    )
    assert fetched.user == created.user
