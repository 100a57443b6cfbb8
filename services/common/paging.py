"""Opaque page tokens for List RPCs (AIP-158 style): clients pass back what they were given."""

from __future__ import annotations

import base64
import binascii

from services.common.faults import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


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
    if kind != "o" or offset < 0:
        raise InvalidArgument(
            "page_token is not one this service issued",
            violations=[FieldViolation("page_token", "pass back a next_page_token unchanged")],
        )
    return offset
