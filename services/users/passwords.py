"""Passwords: Argon2id hashes (argon2-cffi), computed off the event loop.

Only the hash is stored, in PHC string form ("$argon2id$v=19$m=19456,t=2,p=1$salt$hash"),
which carries its own parameters: raising them later leaves old hashes verifiable.

The parameters (default_hasher) are OWASP's Password Storage Cheat Sheet's first Argon2id
configuration: 19 MiB, 2 passes, 1 lane, memory-hard so that guessing on GPUs is costly, at
~0.05 s a hash on the 2-core machines this is built on. argon2-cffi's own default (RFC 9106's
64 MiB, 3 passes, 4 lanes) took ~0.16 s and all four lanes' CPU: every sign-up and sign-in of
a busy shop paid that. Hashing runs on a small thread pool of its own (argon2-cffi releases
the GIL): the event loop keeps serving, and at most `workers` hashes run at once however many
sign-ins arrive.

`verify(None, password)` checks against a dummy hash and returns False: an unknown email, or
an account created without a password, costs what a wrong password costs, so timing does not
tell whether an account exists. The dummy hash is made when the Passwords is (on its pool, as
users starts; `ready()` waits for it), not on the first unknown email, which would otherwise
cost a hash more than any other answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

T = TypeVar("T")


def default_hasher() -> PasswordHasher:
    """Argon2id with 2 passes over 19 MiB in 1 lane (see the module docstring)."""
    return PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


MIN_PASSWORD_LENGTH = 8
# Argon2 hashes any length in about the same time; the cap bounds the request, not the hash.
MAX_PASSWORD_LENGTH = 1024
DEFAULT_WORKERS = 2
# Any value: it only gives unknown accounts a hash of the right cost to be checked against.
_DUMMY_PASSWORD = "shopmesh-dummy-password"


class Passwords:
    """Hashes and checks passwords on a bounded thread pool (see module docstring)."""

    def __init__(
        self, hasher: PasswordHasher | None = None, workers: int = DEFAULT_WORKERS
    ) -> None:
        self._hasher = hasher or default_hasher()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        self._dummy_hash = self._threads.submit(self._hasher.hash, _DUMMY_PASSWORD)

    async def ready(self) -> None:
        """Wait until the dummy hash exists (users starts serving only then)."""
        await asyncio.wrap_future(self._dummy_hash)

    async def hash(self, password: str) -> str:
        """The PHC-format Argon2id hash of `password`, with a fresh random salt."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True if `password` matches `password_hash`; False otherwise, including when there is
        no hash (then a dummy hash is checked, at the same cost)."""
        if password_hash is None:
            dummy_hash = await asyncio.wrap_future(self._dummy_hash)
            await self._run(self._matches, dummy_hash, password)
            return False
        return await self._run(self._matches, password_hash, password)

    async def close(self) -> None:
        """Wait for the hashes in progress, then stop the threads."""
        await asyncio.to_thread(self._threads.shutdown, True)

    def _matches(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, function, *args)
