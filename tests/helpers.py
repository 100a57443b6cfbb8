"""Plain helpers shared by several test modules (fixtures live in conftest.py).

tests/conftest.py registers this module for pytest's assertion rewriting, so a failed `assert`
in here reports its values like one written in the test itself.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, overload

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2

from services.common.status import error_info

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


@overload
def health_check(
    channel: aio.Channel,
) -> aio.UnaryUnaryMultiCallable[Any, health_pb2.HealthCheckResponse]: ...


@overload
def health_check(
    channel: grpc.Channel,
) -> grpc.UnaryUnaryMultiCallable[Any, health_pb2.HealthCheckResponse]: ...


def health_check(
    channel: aio.Channel | grpc.Channel,
) -> (
    aio.UnaryUnaryMultiCallable[Any, health_pb2.HealthCheckResponse]
    | grpc.UnaryUnaryMultiCallable[Any, health_pb2.HealthCheckResponse]
):
    """grpc.health.v1.Health/Check on `channel` (sync or asyncio).

    Typed by hand: the grpc_health stubs declare no methods on HealthStub.
    """
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def expect_error_info(error: aio.AioRpcError, code: grpc.StatusCode) -> error_details_pb2.ErrorInfo:
    """Check that a call failed with `code` and an ErrorInfo detail; return that ErrorInfo."""
    assert error.code() == code
    info = error_info(error)
    assert info is not None, f"{code.name} without an ErrorInfo detail: {error.details()!r}"
    return info


def count_rows(db_path: Path, sql: str) -> int:
    """Run a COUNT (or other one-number) query against a service's own database file through a
    second connection."""
    with closing(sqlite3.connect(db_path)) as db:
        count: int = db.execute(sql).fetchone()[0]
        return count


@dataclass
class ManualClock:
    """A clock tests move by hand."""

    now: datetime = field(default_factory=lambda: datetime(2025, 1, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
