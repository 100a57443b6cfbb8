"""Wiring of the users service: its store, password hasher, signing keys, domain and
servicer, as an App for common.server.

Service-specific settings (from the environment):
- SHOPMESH_USERS_KEYS_DIR: the directory of the token signing keys and `jwks.json` (default
  `users-keys` beside the database; see services.users.keys). Created with a first key when
  it has none.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from argon2 import PasswordHasher

from services.common.clock import utc_now
from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.users.domain import Users
from services.users.keys import KEYS_DIR_VARIABLE, KeyDirectory
from services.users.passwords import Passwords
from services.users.servicer import UsersServicer
from services.users.sessions import Sessions
from services.users.store import SqlUserStore
from services.users.throttle import DEFAULT_LIMITS, SignInLimits
from shop.users.v1 import users_pb2, users_pb2_grpc

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


def keys_dir(config: ServiceConfig, env: Mapping[str, str]) -> Path:
    """Where the signing keys live: SHOPMESH_USERS_KEYS_DIR, else beside the database."""
    return Path(env.get(KEYS_DIR_VARIABLE) or config.db_path.parent / "users-keys")


async def build(
    config: ServiceConfig,
    env: Mapping[str, str] | None = None,
    *,
    clock: Callable[[], datetime] = utc_now,
    limits: SignInLimits = DEFAULT_LIMITS,
    hasher: PasswordHasher | None = None,
) -> App:
    """The users App: UsersService on its database (`config.database`), signing with the
    keys in `keys_dir` (created if absent). `clock`, `limits` and `hasher` (Argon2 parameters
    other than the production ones) are for tests."""
    keys = KeyDirectory(keys_dir(config, os.environ if env is None else env))
    await asyncio.to_thread(keys.ensure, clock())
    store = await SqlUserStore.open(config.database)
    passwords = Passwords(hasher)
    await passwords.ready()
    servicer = UsersServicer(
        Users(store, clock, passwords, limits), Sessions(store, passwords, keys, limits, clock)
    )
    return App(
        registrations=[
            Registration(SERVICE_NAME, servicer, users_pb2_grpc.add_UsersServiceServicer_to_server)
        ],
        cleanups=[store.close, passwords.close],
    )
