"""Signing in: SignIn checks a password and opens a session, RenewToken renews it, GetJwks
publishes the keys that verify it.

No grpc here. The caller's source address arrives as a plain value (the servicer reads it from
the request), errors are DomainErrors the shared interceptor maps:

- a failed sign-in is Unauthenticated INVALID_CREDENTIALS with one message whether the email is
  unknown, the password wrong or the account has none, after one password check in every case
  (services.users.passwords checks a dummy hash when there is nothing to check against);
- a throttled attempt is ResourceExhausted SIGN_IN_THROTTLED with the wait as RetryInfo, for
  the account or the address alike (services.users.throttle);
- a refresh token that is unknown, expired or used is Unauthenticated INVALID_REFRESH_TOKEN.
  A used one revokes its whole family (every token descended from one sign-in): either it
  was stolen and someone renewed with it, or a client retried a renewal whose answer was lost.
  The OAuth 2.0 security best practice (RFC 9700) treats both alike; the customer signs in
  again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from services.common.clock import utc_now
from services.common.errors import ResourceExhausted, Unauthenticated, Validator
from services.users.domain import MAX_EMAIL_LENGTH, normalize_email
from services.users.keys import KeyDirectory
from services.users.passwords import MAX_PASSWORD_LENGTH, Passwords
from services.users.throttle import DEFAULT_LIMITS, AttemptStore, SignInLimits, throttle_keys
from services.users.tokens import (
    REFRESH_TOKEN_LIFETIME,
    Session,
    hash_refresh_token,
    new_refresh_token,
    sign_access_token,
)

INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
INVALID_REFRESH_TOKEN = "INVALID_REFRESH_TOKEN"
SIGN_IN_THROTTLED = "SIGN_IN_THROTTLED"


@dataclass(frozen=True)
class Credentials:
    """What sign-in needs of an account: its id and password hash (None: it has none)."""

    user_id: str
    password_hash: str | None


@dataclass(frozen=True)
class RefreshToken:
    """A stored refresh token: only its hash, the sign-in it descends from, its owner."""

    token_hash: str
    family_id: str
    user_id: str
    expire_time: datetime


class Renewal(Enum):
    """What the store did with a refresh token presented for renewal."""

    RENEWED = "renewed"
    # Unknown, expired or already revoked.
    INVALID = "invalid"
    # Used before: its family has just been revoked.
    REUSED = "reused"


class SessionStore(AttemptStore, Protocol):
    """Persistence sign-in needs (implemented by services.users.store), the failure counts of
    services.users.throttle included."""

    async def credentials(self, email: str) -> Credentials | None:
        """The account with the normalised `email`, or None."""
        ...

    async def add_refresh_token(self, token: RefreshToken, now: datetime) -> None:
        """Store a new refresh token (and forget the ones expired by `now`)."""
        ...

    async def renew(
        self, token_hash: str, replacement_hash: str, expire_time: datetime, now: datetime
    ) -> tuple[Renewal, str]:
        """Atomically: if `token_hash` is live at `now`, mark it used and store its
        replacement in the same family; if it was used, revoke its family. Returns the
        outcome and the token's user id ("" unless RENEWED)."""
        ...


class Sessions:
    """SignIn, RenewToken and GetJwks (see module docstring)."""

    def __init__(
        self,
        store: SessionStore,
        passwords: Passwords,
        keys: KeyDirectory,
        limits: SignInLimits = DEFAULT_LIMITS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._keys = keys
        self._limits = limits
        self._clock = clock

    async def sign_in(self, email: str, password: str, source_address: str | None) -> Session:
        """Check `password` for `email` and open a session (see module docstring)."""
        email = normalize_email(email)
        check = Validator()
        if check.require(bool(email), "email", "must not be empty"):
            check.require(
                len(email) <= MAX_EMAIL_LENGTH,
                "email",
                f"must be at most {MAX_EMAIL_LENGTH} characters",
            )
        if check.require(bool(password), "password", "must not be empty"):
            check.require(
                len(password) <= MAX_PASSWORD_LENGTH,
                "password",
                f"must be at most {MAX_PASSWORD_LENGTH} characters",
            )
        check.raise_if_invalid("invalid SignIn request")

        keys = throttle_keys(self._limits, email, source_address)
        wait = await self._store.begin_attempt(keys, self._clock())
        if wait > timedelta(0):
            raise ResourceExhausted(
                "too many failed sign-ins; wait before trying again",
                reason=SIGN_IN_THROTTLED,
                retry_after_seconds=wait.total_seconds(),
            )
        account = await self._store.credentials(email)
        matches = await self._passwords.verify(account.password_hash if account else None, password)
        if account is None or not matches:
            raise Unauthenticated("email or password is incorrect", reason=INVALID_CREDENTIALS)
        await self._store.attempt_succeeded(keys)
        return await self._open(account.user_id, family_id=uuid.uuid4().hex)

    async def renew(self, refresh_token: str) -> Session:
        """Trade a live refresh token for a new session; the token is used up."""
        check = Validator()
        check.require(bool(refresh_token), "refresh_token", "must not be empty")
        check.raise_if_invalid("invalid RenewToken request")
        now = self._clock()
        replacement = new_refresh_token()
        expire_time = now + REFRESH_TOKEN_LIFETIME
        outcome, user_id = await self._store.renew(
            hash_refresh_token(refresh_token), hash_refresh_token(replacement), expire_time, now
        )
        if outcome is not Renewal.RENEWED:
            raise Unauthenticated(
                "the refresh token is not valid; sign in again", reason=INVALID_REFRESH_TOKEN
            )
        return self._session(user_id, replacement, expire_time, now)

    def jwks_json(self) -> str:
        """The JWK Set that verifies live access tokens, as JSON (what jwks.json holds)."""
        return self._keys.ring().jwks_json()

    async def _open(self, user_id: str, family_id: str) -> Session:
        now = self._clock()
        refresh_token = new_refresh_token()
        expire_time = now + REFRESH_TOKEN_LIFETIME
        await self._store.add_refresh_token(
            RefreshToken(hash_refresh_token(refresh_token), family_id, user_id, expire_time), now
        )
        return self._session(user_id, refresh_token, expire_time, now)

    def _session(
        self, user_id: str, refresh_token: str, refresh_expire_time: datetime, now: datetime
    ) -> Session:
        key = self._keys.ring().current
        access_token, access_expire_time = sign_access_token(
            key.private_key(), key.kid, user_id, now
        )
        return Session(
            user_id, access_token, access_expire_time, refresh_token, refresh_expire_time
        )
