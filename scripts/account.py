"""A shopper for the scripts that call the gateway as one (`make bench`, `make fuzz`): an account
signed up with a password and signed in, whose calls carry its access token (the gateway
refuses every protected method without one: UNAUTHENTICATED, TOKEN_MISSING).

The token lives 15 minutes (services/users/tokens.py, ACCESS_TOKEN_LIFETIME): a script that
runs longer signs a new shopper in for each part."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from grpc import aio

from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.envoy.signin import bearer_metadata

SIGN_IN_TIMEOUT = 10.0
"""Seconds for each of CreateUser and SignIn (each hashes the password once, with Argon2id)."""


@dataclass(frozen=True)
class Shopper:
    """A signed-in account: `metadata` goes with every call made as it."""

    user_id: str
    metadata: tuple[tuple[str, str], ...]


async def sign_up(gateway: str, label: str) -> Shopper:
    """A new account `label-...@example.com` with a random password, signed in through the
    gateway (host:port)."""
    email = f"{label}-{uuid.uuid4().hex[:12]}@example.com"
    password = secrets.token_urlsafe(16)
    async with aio.insecure_channel(gateway) as channel:
        users = users_pb2_grpc.UsersServiceStub(channel)
        await users.CreateUser(
            users_pb2.CreateUserRequest(
                request_id=f"{label}-{uuid.uuid4().hex}",
                email=email,
                display_name=label.capitalize(),
                password=password,
            ),
            timeout=SIGN_IN_TIMEOUT,
        )
        signed_in = await users.SignIn(
            users_pb2.SignInRequest(email=email, password=password), timeout=SIGN_IN_TIMEOUT
        )
    session = signed_in.session
    return Shopper(session.user_id, bearer_metadata(session.access_token))
