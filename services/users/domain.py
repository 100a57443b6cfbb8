"""Users domain: validation and normalisation of accounts, and the create/get rules.

An account may have a password (hashed by services.users.passwords before it reaches the
store); one created without (by a client older than sign-in) exists but cannot sign in.
CreateUser says EMAIL_TAKEN (users.proto says why that is accepted), so refused sign-ups are
throttled per source address (services.users.throttle), which arrives as a plain value.
Signing in is services.users.sessions. Reading an account is made for a `caller` (the
signed-in user, or orders checking out on their behalf) and answers only for the caller's own:
another user's account is NOT_FOUND with the very words of an id no account has, so a shopper
can neither read another's email nor tell which user ids exist.

No grpc here: the servicer converts protos to these calls, and DomainErrors raised here become
status codes in the shared error-mapping interceptor.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Protocol

from services.common.clock import utc_now
from services.common.errors import AlreadyExists, NotFound, ResourceExhausted, Validator
from services.users.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, Passwords
from services.users.throttle import DEFAULT_LIMITS, AttemptStore, SignInLimits, sign_up_keys

# RFC 5321 limits: 64 characters before the "@", 254 for the whole address.
MAX_EMAIL_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
MAX_DISPLAY_NAME_LENGTH = 100
MAX_REQUEST_ID_LENGTH = 255

USER_ID_PREFIX = "usr_"
SIGN_UP_THROTTLED = "SIGN_UP_THROTTLED"

# A practical subset of RFC 5322 on an already lower-cased address: a dot-atom local part
# (no quoted strings, no comments) and a DNS host name with at least two labels whose last one
# is alphabetic (or an IDNA "xn--" label). It rejects what a shop should not send mail to.
_EMAIL = re.compile(
    r"^(?P<local>[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@(?P<domain>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59}))$"
)


@dataclass(frozen=True)
class User:
    """A shop customer. `email` is normalised; `create_time` is timezone-aware UTC."""

    user_id: str
    email: str
    display_name: str
    create_time: datetime


@dataclass(frozen=True)
class NewUser:
    """A validated, normalised CreateUser request. `request_id` is "" when not idempotent,
    `password` "" when the account gets none."""

    request_id: str
    email: str
    display_name: str
    # Never in a repr: a NewUser in a log line or a traceback must not show it.
    password: str = field(default="", repr=False)


class AddOutcome(Enum):
    """What the store did with an `add` call (decided inside one transaction)."""

    CREATED = "created"
    # A user was created earlier under the same request id; nothing was written.
    REPLAYED = "replayed"
    # Another request owns the email; nothing was written.
    EMAIL_TAKEN = "email_taken"


class UserStore(AttemptStore, Protocol):
    """Persistence the users domain needs (implemented by services.users.store), the failure
    counts of services.users.throttle included."""

    async def add(
        self, user: User, request_id: str, password_hash: str | None = None
    ) -> tuple[AddOutcome, User]:
        """Atomically: return the user of `request_id` if it was seen, else the user holding
        `user.email` if any, else insert `user` with `password_hash`. The returned user is the
        one the outcome is about (the new, the earlier or the conflicting one)."""
        ...

    async def password_hash(self, user_id: str) -> str | None:
        """The password hash of `user_id`, or None (no such user, or no password)."""
        ...

    async def get(self, user_id: str) -> User | None:
        """The user with `user_id`, or None."""
        ...


def normalize_email(email: str) -> str:
    """The canonical form of an address: surrounding whitespace removed, lower-cased.

    The whole address is lower-cased (not only the domain) because customers type their email
    in any case and expect one account; no real mailbox provider is case-sensitive.
    """
    return email.strip().lower()


def is_valid_email(email: str) -> bool:
    """True if the normalised `email` is an address the shop accepts."""
    match = _EMAIL.match(email)
    return (
        match is not None
        and len(email) <= MAX_EMAIL_LENGTH
        and len(match["local"]) <= MAX_LOCAL_PART_LENGTH
    )


def _has_control_characters(text: str) -> bool:
    # Only category Cc (newlines, tabs, NUL...): format characters such as the zero-width
    # joiner inside emoji sequences are legitimate in names.
    return any(unicodedata.category(char) == "Cc" for char in text)


def validate_new_user(
    request_id: str, email: str, display_name: str, password: str = ""
) -> NewUser:
    """Validate and normalise a CreateUser request; raises InvalidArgument naming every bad
    field. The password is kept as given (no trimming: every character counts)."""
    email = normalize_email(email)
    display_name = display_name.strip()
    check = Validator()
    # One violation per field: the first rule an email breaks is the one worth reporting.
    if check.require(bool(email), "email", "must not be empty") and check.require(
        len(email) <= MAX_EMAIL_LENGTH, "email", f"must be at most {MAX_EMAIL_LENGTH} characters"
    ):
        check.require(
            is_valid_email(email), "email", "must be an email address such as ada@example.com"
        )
    check.require(
        len(display_name) <= MAX_DISPLAY_NAME_LENGTH,
        "display_name",
        f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters",
    )
    check.require(
        not _has_control_characters(display_name),
        "display_name",
        "must not contain control characters",
    )
    check.require(
        not password or MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH,
        "password",
        f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters when set",
    )
    check.require(
        len(request_id) <= MAX_REQUEST_ID_LENGTH,
        "request_id",
        f"must be at most {MAX_REQUEST_ID_LENGTH} characters",
    )
    check.raise_if_invalid("invalid CreateUser request")
    return NewUser(request_id, email, display_name, password)


def new_user_id() -> str:
    """A fresh, unguessable user id."""
    return USER_ID_PREFIX + uuid.uuid4().hex


class Users:
    """The users service's behaviour: create accounts (idempotently) and look them up."""

    def __init__(
        self,
        store: UserStore,
        clock: Callable[[], datetime] = utc_now,
        passwords: Passwords | None = None,
        limits: SignInLimits = DEFAULT_LIMITS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._passwords = passwords or Passwords()
        self._limits = limits

    async def create(
        self,
        request_id: str,
        email: str,
        display_name: str,
        password: str = "",
        source_address: str | None = None,
    ) -> User:
        """Create an account, or return the one an earlier call with `request_id` created.

        Raises InvalidArgument for bad input, ResourceExhausted SIGN_UP_THROTTLED (with the
        wait) after too many refused sign-ups from `source_address`, AlreadyExists EMAIL_TAKEN
        when another request owns the email, AlreadyExists IDEMPOTENCY_KEY_REUSED when
        `request_id` was used for a different email, display name or password.
        """
        new = validate_new_user(request_id, email, display_name, password)
        throttle = sign_up_keys(self._limits, source_address)
        if throttle:
            wait = await self._store.begin_attempt(throttle, self._clock())
            if wait.total_seconds() > 0:
                raise ResourceExhausted(
                    "too many refused sign-ups from this address; wait before trying again",
                    reason=SIGN_UP_THROTTLED,
                    retry_after_seconds=wait.total_seconds(),
                )
        user = await self._add(new)
        if throttle:
            await self._store.attempt_succeeded(throttle)
        return user

    async def _add(self, new: NewUser) -> User:
        candidate = User(new_user_id(), new.email, new.display_name, self._clock())
        password_hash = await self._passwords.hash(new.password) if new.password else None
        outcome, user = await self._store.add(candidate, new.request_id, password_hash)
        if outcome is AddOutcome.REPLAYED and not await self._same_request(user, new):
            raise AlreadyExists(
                "request_id was already used to create a different user",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"request_id": new.request_id},
            )
        if outcome is AddOutcome.EMAIL_TAKEN:
            raise AlreadyExists(
                "a user with this email already exists",
                reason="EMAIL_TAKEN",
                metadata={"email": new.email},
            )
        return user

    async def _same_request(self, user: User, new: NewUser) -> bool:
        """Whether `new` asks for what created `user` (a retry, not a reused key)."""
        if (user.email, user.display_name) != (new.email, new.display_name):
            return False
        stored = await self._store.password_hash(user.user_id)
        if stored is None or not new.password:
            return stored is None and not new.password
        return await self._passwords.verify(stored, new.password)

    async def get(self, caller: str, user_id: str) -> User:
        """The caller's own account (an empty user_id means the caller); raises NotFound
        USER_NOT_FOUND if there is none or `user_id` names someone else."""
        user_id = user_id or caller
        user = await self._store.get(user_id) if user_id == caller else None
        if user is None:
            raise NotFound(
                f"user {user_id!r} does not exist",
                reason="USER_NOT_FOUND",
                metadata={"user_id": user_id},
            )
        return user
