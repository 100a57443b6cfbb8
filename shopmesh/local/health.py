"""Asking an app whether it serves: grpc.health.v1 Check, through its sidecar's health listener
(or straight at its socket), and the gateway's own HTTP readiness."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, overload

import grpc
import httpx
from grpc import aio
from grpc_health.v1 import health_pb2

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
SERVING = "SERVING"


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
    """grpc.health.v1.Health/Check on `channel` (sync or asyncio). Typed by hand: the
    grpc_health stubs declare no methods on HealthStub."""
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


def health_channel(address: str) -> aio.Channel:
    """A channel for health checks. Reconnection backoff is kept short: start-up polls every
    few milliseconds, and gRPC's default first backoff is a whole second."""
    return aio.insecure_channel(
        address,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 200),
        ],
    )


async def check_health(channel: aio.Channel, grpc_service: str, within: float = 1.0) -> str:
    """grpc.health.v1 status of `grpc_service`: SERVING, NOT_SERVING, ... or
    `unreachable (<gRPC code>)`."""
    try:
        response = await health_check(channel)(
            health_pb2.HealthCheckRequest(service=grpc_service), timeout=within
        )
    except aio.AioRpcError as error:
        return f"unreachable ({error.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def serving(channel: aio.Channel, grpc_service: str) -> bool:
    return await check_health(channel, grpc_service) == SERVING


async def http_ok(url: str, within: float = 2.0, headers: Mapping[str, str] | None = None) -> bool:
    """Whether `url` answers 200 (the gateway's /healthz, the dashboard's). Loopback only: no
    proxy."""
    # Plain HTTP: verify=False spares loading the CA bundle for a TLS context never used (as
    # shopmesh/envoy/admin.py does), ~30 ms of blocking on the caller's event loop each time.
    try:
        async with httpx.AsyncClient(timeout=within, trust_env=False, verify=False) as client:
            response = await client.get(url, headers=headers)
    except httpx.TransportError:
        return False
    return response.status_code == 200
