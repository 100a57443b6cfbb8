"""Opaque page tokens for List RPCs (AIP-158 style): clients pass back what they were given."""

from __future__ import annotations

import base64
import binascii

from services.common.errors import FieldViolation, InvalidArgument, Validator

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Largest offset SQLite can bind; a bigger one in a token can only be forged.
_MAX_OFFSET = 2**63 - 1


def page_size(requested: int) -> int:
    """The page size to use: the default for 0, capped at MAX_PAGE_SIZE; negative is invalid."""
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative",
            violations=[FieldViolation("page_size", "must be >= 0")],
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(offset: int) -> str:
    """The token for the page starting at `offset`."""
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def decode_token(token: str) -> int:
    """The offset a token names; "" is the first page. Tampered tokens are INVALID_ARGUMENT."""
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        offset = -1
        kind = ""
    if kind != "o" or not 0 <= offset <= _MAX_OFFSET:
        raise InvalidArgument(
            "page_token is not one this service issued",
            violations=[FieldViolation("page_token", "pass back a next_page_token unchanged")],
        )
    return offset


def checked_page(check: Validator, requested_size: int, token: str) -> tuple[int, int]:
    """The (page size, offset) of a List request, adding any page_size or page_token violation
    to `check` (0 stands in for a bad value) so the caller's one InvalidArgument lists them
    together with its own fields."""
    size = offset = 0
    try:
        size = page_size(requested_size)
    except InvalidArgument as error:
        check.violations.extend(error.violations)
    try:
        offset = decode_token(token)
    except InvalidArgument as error:
        check.violations.extend(error.violations)
    return size, offset
