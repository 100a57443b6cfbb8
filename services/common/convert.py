"""Conversions between domain values and the shared contract types (Timestamp, shop Money).

The grpc side of services/common/clock.py and money.py: servicers and clients use these, domain
code never does.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.clock import from_micros
from services.common.money import Money
from shop.common.v1 import money_pb2

# The seconds google.protobuf.Timestamp allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def to_timestamp(moment: datetime) -> Timestamp:
    """The Timestamp of an aware datetime (a naive one is taken as UTC, as protobuf does)."""
    timestamp = Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def from_timestamp(timestamp: Timestamp) -> datetime:
    """The UTC-aware datetime of a Timestamp, to the microsecond.

    Raises ValueError, its message saying what is wrong, for a Timestamp no datetime can hold:
    seconds outside years 1..9999 or nanos outside 0..999,999,999 (a sender's bug, not ours,
    so callers turn it into INVALID_ARGUMENT).
    """
    if not _MIN_SECONDS <= timestamp.seconds <= _MAX_SECONDS:
        raise ValueError("must be between years 1 and 9999")
    if not 0 <= timestamp.nanos < 1_000_000_000:
        raise ValueError("must have nanos between 0 and 999999999")
    return from_micros(timestamp.seconds * 1_000_000 + timestamp.nanos // 1_000)


def money_to_proto(money: Money) -> money_pb2.Money:
    """The wire form of a domain Money."""
    return money_pb2.Money(currency_code=money.currency_code, minor_units=money.minor_units)


def money_from_proto(money: money_pb2.Money) -> Money:
    """A domain Money from its wire form (validated by the domain, not here)."""
    return Money(money.currency_code, money.minor_units)
