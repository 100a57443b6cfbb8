"""Opaque cursor page tokens for List RPCs (AIP-158 style): clients pass back what they were given.

A token names the sort key of the last item of the page it follows (a SKU; a (create_time,
order_id) pair; a sequence number), so the next page starts right after that item: items added
or removed meanwhile never shift a page, unlike an offset. Each token is tagged with the List
RPC that issued it, so a token of one List RPC is refused by another.

Tokens are opaque, not secret: base64url of a small JSON array. A client that edits one can only
move where its own listing starts, which the request's other fields still scope.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.clock import from_micros, to_micros
from services.common.errors import FieldViolation, InvalidArgument, Validator

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# The integers SQLite can bind; a bigger one in a token can only be forged.
_MIN_INTEGER = -(2**63)
_MAX_INTEGER = 2**63 - 1
# Far above any token this module issues; a longer one is refused before it is parsed.
_MAX_TOKEN_LENGTH = 2048
# Datetimes travel as epoch microseconds; outside these no datetime exists.
_MIN_MICROS = to_micros(datetime.min.replace(tzinfo=UTC))
_MAX_MICROS = to_micros(datetime.max.replace(tzinfo=UTC))

# One part of a sort key, and the sort key of an item: what a cursor token carries.
Part = int | str | datetime
Key = tuple[Part, ...]
PartType = type[int] | type[str] | type[datetime]


def page_size(requested: int) -> int:
    """The page size to use: the default for 0, capped at MAX_PAGE_SIZE; negative is invalid."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            violations=[FieldViolation("page_size", "must be >= 0")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _invalid_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not one this service issued",
        violations=[FieldViolation("page_token", "pass back a next_page_token unchanged")],
    )


def _encode_part(value: Part, expected: PartType) -> int | str:
    if not isinstance(value, expected):
        raise ValueError(f"cursor part {value!r} is not a {expected.__name__}")
    return to_micros(value) if isinstance(value, datetime) else value


def _decode_part(value: object, expected: PartType) -> Part:
    """The key part `value` (parsed JSON) stands for; ValueError if it cannot be one."""
    # `type(...) is`, not isinstance: JSON true/false are bools, which isinstance calls ints.
    if expected is str and type(value) is str:
        return value
    if expected is int and type(value) is int and _MIN_INTEGER <= value <= _MAX_INTEGER:
        return value
    if expected is datetime and type(value) is int and _MIN_MICROS <= value <= _MAX_MICROS:
        return from_micros(value)
    raise ValueError(f"{value!r} is not a {expected.__name__} cursor part")


@dataclass(frozen=True)
class Cursors:
    """The page tokens of one List RPC: `rpc` tags them, `shape` is the type of each part of
    the sort key they carry, e.g. `Cursors("ListOrders", (datetime, str))`."""

    rpc: str
    shape: tuple[PartType, ...]

    def token(self, key: Key) -> str:
        """The token of the page that starts right after the item with sort key `key`."""
        if len(key) != len(self.shape):
            raise ValueError(f"{self.rpc} cursor {key!r} does not match {self.shape}")
        parts = [
            _encode_part(part, expected) for part, expected in zip(key, self.shape, strict=True)
        ]
        payload = json.dumps([self.rpc, *parts], separators=(",", ":"), ensure_ascii=False)
        return base64.urlsafe_b64encode(payload.encode()).decode()

    def key(self, token: str) -> Key | None:
        """The sort key a token of this RPC carries; None for "" (the first page).

        Raises InvalidArgument on `page_token` for anything else: tampered, truncated, or
        issued by another List RPC.
        """
        if not token:
            return None
        if len(token) > _MAX_TOKEN_LENGTH:
            raise _invalid_token()
        try:
            document = json.loads(base64.b64decode(token, altchars=b"-_", validate=True))
            if (
                not isinstance(document, list)
                or document[:1] != [self.rpc]
                or len(document) != 1 + len(self.shape)
            ):
                raise ValueError("not a cursor of this RPC")
            return tuple(map(_decode_part, document[1:], self.shape))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            # binascii.Error and UnicodeDecodeError are ValueErrors; named for the reader.
            raise _invalid_token() from None

    def checked_page(
        self, check: Validator, requested_size: int, token: str
    ) -> tuple[int, Key | None]:
        """The (page size, cursor key) of a List request, adding any page_size or page_token
        violation to `check` (0 and None stand in for a bad value), so the caller's one
        InvalidArgument lists them together with its own fields."""
        size: int = 0
        key: Key | None = None
        try:
            size = page_size(requested_size)
        except InvalidArgument as error:
            check.violations.extend(error.violations)
        try:
            key = self.key(token)
        except InvalidArgument as error:
            check.violations.extend(error.violations)
        return size, key
