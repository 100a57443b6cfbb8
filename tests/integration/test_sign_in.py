"""Signing in against a real users server on a temporary Unix socket: passwords, access
tokens checked with the published keys, key rotation, refresh-token rotation, throttling."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import jwt
import pytest
from argon2 import PasswordHasher
from grpc import aio

from services.common.server import start
from services.common.status import field_violations, retry_delay
from services.users.app import build, keys_dir
from services.users.keys import KeyDirectory
from services.users.keys import main as keys_command
from services.users.servicer import CLIENT_ADDRESS_METADATA
from services.users.throttle import SignInLimits, ThrottlePolicy
from services.users.tokens import ACCESS_TOKEN_LIFETIME, ALGORITHM, AUDIENCE, ISSUER
from shop.users.v1 import users_pb2, users_pb2_grpc
from tests.support.clock import ManualClock
from tests.support.databases import ON_BOTH_BACKENDS, count_rows, files_containing
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner

pytestmark = ON_BOTH_BACKENDS

Channels = Callable[[str], aio.Channel]
Stub: TypeAlias = "users_pb2_grpc.UsersServiceAsyncStub"

# Real Argon2id at a fraction of the production cost, for tests about throttling rather than
# hashing (the production parameters are checked in test_only_an_argon2id_hash...).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery staple"
WRONG = "not the password"


@pytest.fixture
async def users(services: ServiceRunner, channels: Channels) -> Stub:
    running = await services.start("users", build)
    return users_pb2_grpc.UsersServiceStub(channels(running.address))


@pytest.fixture
def keys(services: ServiceRunner) -> KeyDirectory:
    """The key directory the users server of `services` uses (the default, beside its DB)."""
    return KeyDirectory(services.config("users").db_path.parent / "users-keys")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def start_with_clock(
    services: ServiceRunner,
    channels: Channels,
    clock: ManualClock,
    limits: SignInLimits = SignInLimits(),  # noqa: B008  (frozen: safe to share)
) -> Stub:
    build_users = functools.partial(build, clock=clock, limits=limits, hasher=CHEAP_HASHER)
    running = await services.start("users", build_users)
    return users_pb2_grpc.UsersServiceStub(channels(running.address))


async def sign_up(users: Stub, email: str = "ada@example.com", password: str = PASSWORD) -> str:
    created = await users.CreateUser(users_pb2.CreateUserRequest(email=email, password=password))
    return created.user.user_id


async def sign_in(
    users: Stub, email: str = "ada@example.com", password: str = PASSWORD, address: str = ""
) -> users_pb2.Session:
    metadata = ((CLIENT_ADDRESS_METADATA, address),) if address else None
    response = await users.SignIn(
        users_pb2.SignInRequest(email=email, password=password), metadata=metadata
    )
    return response.session


async def refused(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    return raised.value


async def verify(users: Stub, token: str) -> dict[str, Any]:
    """The token's claims, checked as a gateway would: signature against the published JWKS
    (the key its `kid` names), algorithm, issuer, audience, expiry."""
    jwks = jwt.PyJWKSet.from_json((await users.GetJwks(users_pb2.GetJwksRequest())).jwks_json)
    key = jwks[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER
    )
    return claims


async def test_a_new_user_signs_in_with_a_token_the_published_keys_verify(users: Stub) -> None:
    user_id = await sign_up(users)
    session = await sign_in(users, email=" ADA@example.com ")

    claims = await verify(users, session.access_token)
    assert (claims["iss"], claims["aud"], claims["sub"]) == (ISSUER, AUDIENCE, user_id)
    assert claims["exp"] - claims["iat"] == ACCESS_TOKEN_LIFETIME.total_seconds()
    assert session.access_token_expire_time.seconds == claims["exp"]
    assert session.user_id == user_id
    assert session.refresh_token
    assert session.refresh_token_expire_time.seconds > claims["exp"]


async def test_the_jwks_file_is_what_get_jwks_returns(users: Stub, keys: KeyDirectory) -> None:
    published = await users.GetJwks(users_pb2.GetJwksRequest())
    assert keys.jwks_file.read_text() == published.jwks_json
    assert [key["kid"] for key in json.loads(published.jwks_json)["keys"]] == [
        keys.ring().current.kid
    ]
    assert oct(keys.keys_file.stat().st_mode & 0o777) == "0o600"
    assert "d" not in json.loads(published.jwks_json)["keys"][0], "a private key was published"


HASHES_HOLDING = "SELECT COUNT(*) FROM users WHERE password_hash LIKE ?"


async def test_only_an_argon2id_hash_of_the_password_is_stored(
    users: Stub, services: ServiceRunner
) -> None:
    await sign_up(users)
    location = services.config("users").database
    if isinstance(location, Path):
        # On Postgres the bytes are the server's, in its data directory, not the service's.
        assert files_containing(location, PASSWORD.encode()) == []
    assert count_rows(location, HASHES_HOLDING, (f"%{PASSWORD}%",)) == 0
    # The production parameters (OWASP's first Argon2id configuration), not a test's cheap ones.
    production = "$argon2id$v=19$m=19456,t=2,p=1$%"
    assert count_rows(location, HASHES_HOLDING, (production,)) == 1


async def test_unknown_email_wrong_password_and_no_password_fail_alike(
    users: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await sign_up(users)
    await users.CreateUser(users_pb2.CreateUserRequest(email="old@example.com"))
    checked: list[str] = []
    original = PasswordHasher.verify

    def counting(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        checked.append("verify")
        return original(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting)

    failures = []
    for email, password in [
        ("ada@example.com", WRONG),
        ("nobody@example.com", WRONG),
        ("old@example.com", WRONG),
    ]:
        error = await refused(sign_in(users, email=email, password=password))
        info = expect_error_info(error, grpc.StatusCode.UNAUTHENTICATED)
        failures.append((error.details(), info.reason, dict(info.metadata)))
    assert failures == [("email or password is incorrect", "INVALID_CREDENTIALS", {})] * 3
    # Each one costs one Argon2 check, whether or not there was a hash to check against.
    assert checked == ["verify"] * 3


async def test_sign_in_without_a_password_is_invalid_argument(users: Stub) -> None:
    error = await refused(sign_in(users, password=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["password"]


async def test_a_short_password_is_refused_at_sign_up(users: Stub) -> None:
    error = await refused(sign_up(users, password="short"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["password"]


async def test_a_retried_sign_up_must_repeat_the_password(users: Stub) -> None:
    request = users_pb2.CreateUserRequest(request_id="r-1", email="ada@example.com")
    request.password = PASSWORD
    first = await users.CreateUser(request)
    assert (await users.CreateUser(request)).user == first.user
    request.password = "another password"
    info = expect_error_info(
        await refused(users.CreateUser(request)), grpc.StatusCode.ALREADY_EXISTS
    )
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_tokens_of_the_previous_key_verify_after_a_rotation(
    users: Stub, keys: KeyDirectory
) -> None:
    await sign_up(users)
    before = await sign_in(users)
    old_kid = jwt.get_unverified_header(before.access_token)["kid"]

    assert keys_command(["rotate", "--keys-dir", str(keys.path)]) == 0

    published = json.loads((await users.GetJwks(users_pb2.GetJwksRequest())).jwks_json)
    new_kid = keys.ring().current.kid
    assert [key["kid"] for key in published["keys"]] == [new_kid, old_kid]
    assert (await verify(users, before.access_token))["sub"] == before.user_id

    after = await sign_in(users)
    assert jwt.get_unverified_header(after.access_token)["kid"] == new_kid
    assert (await verify(users, after.access_token))["sub"] == after.user_id


async def test_a_refresh_token_works_once_and_its_reuse_revokes_the_session(
    users: Stub,
) -> None:
    await sign_up(users)
    first = await sign_in(users)
    renewed = (
        await users.RenewToken(users_pb2.RenewTokenRequest(refresh_token=first.refresh_token))
    ).session
    assert renewed.refresh_token != first.refresh_token
    assert (await verify(users, renewed.access_token))["sub"] == first.user_id

    for token in (first.refresh_token, renewed.refresh_token, "made-up"):
        info = expect_error_info(
            await refused(users.RenewToken(users_pb2.RenewTokenRequest(refresh_token=token))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert info.reason == "INVALID_REFRESH_TOKEN"


async def test_a_refresh_token_expires(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    users = await start_with_clock(services, channels, clock)
    await sign_up(users)
    session = await sign_in(users)
    clock.advance(timedelta(days=31))
    info = expect_error_info(
        await refused(
            users.RenewToken(users_pb2.RenewTokenRequest(refresh_token=session.refresh_token))
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert info.reason == "INVALID_REFRESH_TOKEN"


async def expect_throttled(attempt: Any) -> timedelta:
    error = await refused(attempt)
    info = expect_error_info(error, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert info.reason == "SIGN_IN_THROTTLED"
    delay = retry_delay(error)
    assert delay is not None, "throttled without a RetryInfo"
    return delay


async def expect_wrong(attempt: Any) -> None:
    info = expect_error_info(await refused(attempt), grpc.StatusCode.UNAUTHENTICATED)
    assert info.reason == "INVALID_CREDENTIALS"


@pytest.mark.parametrize("email", ["ada@example.com", "nobody@example.com"])
async def test_repeated_wrong_passwords_slow_down(
    services: ServiceRunner, channels: Channels, clock: ManualClock, email: str
) -> None:
    users = await start_with_clock(services, channels, clock)
    await sign_up(users)
    for _ in range(5):
        await expect_wrong(sign_in(users, email=email, password=WRONG))
    # Throttled attempts are refused before the password is looked at: the right one too.
    assert await expect_throttled(sign_in(users, email=email)) == timedelta(seconds=1)

    clock.advance(timedelta(seconds=1))
    await expect_wrong(sign_in(users, email=email, password=WRONG))
    assert await expect_throttled(sign_in(users, email=email)) == timedelta(seconds=2)
    clock.advance(timedelta(seconds=1))
    assert await expect_throttled(sign_in(users, email=email)) == timedelta(seconds=1)

    clock.advance(timedelta(seconds=1))
    if email == "ada@example.com":
        await sign_in(users)
        # A success clears the account's count: the owner has five tries again.
        await expect_wrong(sign_in(users, password=WRONG))
    else:
        await expect_wrong(sign_in(users, email=email, password=WRONG))
        assert await expect_throttled(sign_in(users, email=email)) == timedelta(seconds=4)


async def test_throttling_survives_a_restart(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    users = await start_with_clock(services, channels, clock)
    await sign_up(users)
    for _ in range(5):
        await expect_wrong(sign_in(users, password=WRONG))
    await services.stop(services.running[-1])

    users = await start_with_clock(services, channels, clock)
    assert await expect_throttled(sign_in(users)) == timedelta(seconds=1)


async def test_parallel_guesses_get_no_more_tries_than_sequential_ones(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    users = await start_with_clock(services, channels, clock)
    await sign_up(users)
    attempts = [sign_in(users, password=f"guess number {n}") for n in range(10)]
    results = await asyncio.gather(*attempts, return_exceptions=True)
    codes = sorted(result.code().name for result in results if isinstance(result, aio.AioRpcError))
    assert codes == ["RESOURCE_EXHAUSTED"] * 5 + ["UNAUTHENTICATED"] * 5


async def test_one_source_address_is_throttled_across_accounts(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    limits = SignInLimits(address=ThrottlePolicy(free_failures=3))
    users = await start_with_clock(services, channels, clock, limits)
    await sign_up(users)
    for n in range(3):
        await expect_wrong(sign_in(users, email=f"guess{n}@example.com", address="203.0.113.7"))
    assert await expect_throttled(sign_in(users, address="203.0.113.7")) == timedelta(seconds=1)
    # Another address, and the account itself, are not held back by that address's failures.
    await sign_in(users, address="198.51.100.1")


async def test_a_success_does_not_wipe_out_the_failures_of_its_address(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    limits = SignInLimits(address=ThrottlePolicy(free_failures=3))
    users = await start_with_clock(services, channels, clock, limits)
    await sign_up(users)
    office = "203.0.113.7"
    for n in range(2):
        await expect_wrong(sign_in(users, email=f"guess{n}@example.com", address=office))
    await sign_in(users, address=office)
    await expect_wrong(sign_in(users, email="guess2@example.com", address=office))
    assert await expect_throttled(sign_in(users, address=office)) == timedelta(seconds=1)


async def test_without_the_header_a_tcp_peer_is_throttled_by_its_address(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    limits = SignInLimits(address=ThrottlePolicy(free_failures=2))
    config = dataclasses.replace(services.config("users"), listen="127.0.0.1:0")
    app = await build(config, clock=clock, limits=limits, hasher=CHEAP_HASHER)
    running = await start(config, app)
    services.running.append(running)
    users = users_pb2_grpc.UsersServiceStub(channels(running.address))
    for n in range(2):
        await expect_wrong(sign_in(users, email=f"guess{n}@example.com"))
    await expect_throttled(sign_in(users, email="guess2@example.com"))


async def sign_up_from(users: Stub, address: str, email: str) -> users_pb2.CreateUserResponse:
    request = users_pb2.CreateUserRequest(email=email, password=PASSWORD)
    response: users_pb2.CreateUserResponse = await users.CreateUser(
        request, metadata=((CLIENT_ADDRESS_METADATA, address),)
    )
    return response


async def test_testing_taken_emails_from_one_address_slows_its_sign_ups_down(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    limits = SignInLimits(sign_up=ThrottlePolicy(free_failures=3))
    users = await start_with_clock(services, channels, clock, limits)
    office = "203.0.113.7"
    # More new customers than free refusals: accounts created are not held against it.
    for n in range(5):
        await sign_up_from(users, office, f"customer{n}@example.com")
    for n in range(3):
        taken = await refused(sign_up_from(users, office, f"customer{n}@example.com"))
        assert expect_error_info(taken, grpc.StatusCode.ALREADY_EXISTS).reason == "EMAIL_TAKEN"
    throttled = await refused(sign_up_from(users, office, "customer0@example.com"))
    info = expect_error_info(throttled, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert (info.reason, retry_delay(throttled)) == ("SIGN_UP_THROTTLED", timedelta(seconds=1))
    # Elsewhere the answer is unchanged; here, once the wait is over, a new customer signs up.
    elsewhere = await refused(sign_up_from(users, "198.51.100.1", "customer0@example.com"))
    assert expect_error_info(elsewhere, grpc.StatusCode.ALREADY_EXISTS).reason == "EMAIL_TAKEN"
    clock.advance(timedelta(seconds=1))
    await sign_up_from(users, office, "customer5@example.com")


async def test_a_unix_socket_caller_without_the_header_is_throttled_per_account_only(
    services: ServiceRunner, channels: Channels, clock: ManualClock
) -> None:
    # Through a sidecar every caller shares one Unix socket peer: one budget for all of them
    # would let any caller exhaust it for the rest.
    limits = SignInLimits(address=ThrottlePolicy(free_failures=2))
    users = await start_with_clock(services, channels, clock, limits)
    for n in range(4):
        await expect_wrong(sign_in(users, email=f"guess{n}@example.com"))


def test_keys_dir_can_be_set(services: ServiceRunner, tmp_path: Path) -> None:
    config = services.config("users")
    assert keys_dir(config, {}) == config.db_path.parent / "users-keys"
    assert keys_dir(config, {"SHOPMESH_USERS_KEYS_DIR": str(tmp_path)}) == tmp_path
