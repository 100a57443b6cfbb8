"""Time, one way everywhere: UTC-aware datetimes in domain code, integer epoch microseconds in
storage. No grpc here, so domain code may use it; Timestamp conversions live in convert.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_now() -> datetime:
    """The current time in UTC (the default clock of the services)."""
    return datetime.now(UTC)


def now_micros() -> int:
    """The current time as integer epoch microseconds."""
    return time.time_ns() // 1_000


def to_micros(moment: datetime) -> int:
    """Integer microseconds since the epoch of an aware datetime.

    Integer arithmetic: timedelta floor division is exact, float timestamps would round some
    microseconds away.
    """
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC-aware datetime `micros` epoch microseconds stand for (inverse of to_micros)."""
    return EPOCH + timedelta(microseconds=micros)
