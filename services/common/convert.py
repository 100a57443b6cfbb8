"""Conversions between domain values and the shared contract types (Timestamp, shop Money).

The grpc side of services/common/clock.py and money.py: servicers and clients use these, domain
code never does.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from services.common.money import Money
from shop.common.v1 import money_pb2


def to_timestamp(moment: datetime) -> Timestamp:
    """The Timestamp of an aware datetime (a naive one is taken as UTC, as protobuf does)."""
    timestamp = Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp


def micros_to_timestamp(micros: int) -> Timestamp:
    """The Timestamp of integer epoch microseconds."""
    timestamp = Timestamp()
    timestamp.FromMicroseconds(micros)
    return timestamp


def money_to_proto(money: Money) -> money_pb2.Money:
    """The wire form of a domain Money."""
    return money_pb2.Money(currency_code=money.currency_code, minor_units=money.minor_units)


def money_from_proto(money: money_pb2.Money) -> Money:
    """A domain Money from its wire form (validated by the domain, not here)."""
    return Money(money.currency_code, money.minor_units)
