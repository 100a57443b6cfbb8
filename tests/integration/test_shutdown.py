"""Graceful shutdown, in process: health turns NOT_SERVING the moment shutdown begins (so
health-checking sidecars stop routing new calls), calls already in flight still finish within
the grace period, and the server refuses calls once it has stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from services.common.config import ServiceConfig
from services.common.server import App, Registration, RunningService
from shopmesh.local.health import health_check
from tests.support.services import ServiceRunner

HealthCheckRequest = health_pb2.HealthCheckRequest
HealthCheckResponse = health_pb2.HealthCheckResponse
SERVING = HealthCheckResponse.SERVING
NOT_SERVING = HealthCheckResponse.NOT_SERVING
GATE_SERVICE = "shopmesh.test.GateService"
GATE_METHOD = f"/{GATE_SERVICE}/Hold"
# Long enough that a test which waited it out would hit its own timeout instead of passing.
GRACE = 30.0
# Bound on every wait below: far above what any step needs, far below GRACE.
STEP = 10.0


class Gate:
    """A servicer whose one RPC is held open: `entered` is set when a call arrives, and the
    call answers b"done" once `release` is set. No sleeps: the test decides when it ends."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        """Wait for the test to release the call."""
        self.entered.set()
        await self.release.wait()
        return b"done"

    def registration(self) -> Registration:
        """Serve `hold` as a raw-bytes method, beside health and reflection."""
        handler = grpc.method_handlers_generic_handler(
            GATE_SERVICE, {"Hold": grpc.unary_unary_rpc_method_handler(self.hold)}
        )

        def add_to_server(_servicer: Any, server: aio.Server) -> None:
            server.add_generic_rpc_handlers((handler,))

        return Registration(GATE_SERVICE, self, add_to_server)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def running(services: ServiceRunner, gate: Gate) -> RunningService:
    async def build(_config: ServiceConfig) -> App:
        return App([gate.registration()])

    return await services.start("users", build)


@pytest.fixture
async def stop_in_background(
    services: ServiceRunner, gate: Gate
) -> AsyncIterator[Callable[[RunningService], asyncio.Task[None]]]:
    """Start `services.stop(service, GRACE)` as a task; teardown finishes any shutdown a
    failing test left half done, so no server outlives its test."""
    stopping: list[tuple[RunningService, asyncio.Task[None]]] = []

    def stop(service: RunningService) -> asyncio.Task[None]:
        task = asyncio.create_task(services.stop(service, grace=GRACE))
        stopping.append((service, task))
        return task

    yield stop
    gate.release.set()
    for service, task in stopping:
        if not task.done():
            # Calls the test left open would hold the server for all of GRACE: cut it short.
            await service.server.stop(0)
        await asyncio.wait_for(task, STEP)


# Typed by hand: the grpc_health stubs declare no methods on HealthStub.
def _watch(channel: aio.Channel, service: str) -> aio.UnaryStreamCall[Any, HealthCheckResponse]:
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    return watch(HealthCheckRequest(service=service))


def _raw(data: bytes) -> bytes:
    return data


def _hold(channel: aio.Channel) -> aio.UnaryUnaryCall[bytes, bytes]:
    hold = channel.unary_unary(GATE_METHOD, request_serializer=_raw, response_deserializer=_raw)
    return hold(b"", timeout=GRACE)


async def _next_status(watch: aio.UnaryStreamCall[Any, HealthCheckResponse]) -> int:
    response = await asyncio.wait_for(watch.read(), STEP)
    assert isinstance(response, HealthCheckResponse), response
    return response.status


async def test_health_reports_serving_for_the_server_and_each_service(
    running: RunningService, channels: Callable[[str], aio.Channel]
) -> None:
    check = health_check(channels(running.address))

    overall = await check(HealthCheckRequest(service=""), timeout=STEP)
    gate = await check(HealthCheckRequest(service=GATE_SERVICE), timeout=STEP)

    assert (overall.status, gate.status) == (SERVING, SERVING)


async def test_watch_sees_not_serving_once_shutdown_begins_before_the_server_closes(
    running: RunningService,
    channels: Callable[[str], aio.Channel],
    stop_in_background: Callable[[RunningService], asyncio.Task[None]],
) -> None:
    watch = _watch(channels(running.address), GATE_SERVICE)
    assert await _next_status(watch) == SERVING

    stopping = stop_in_background(running)
    status = await _next_status(watch)

    assert status == NOT_SERVING
    # The open Watch is itself an in-flight call, so the server is still draining it.
    assert not stopping.done()
    watch.cancel()
    await asyncio.wait_for(stopping, STEP)


async def test_in_flight_call_completes_during_the_grace_period(
    running: RunningService,
    gate: Gate,
    channels: Callable[[str], aio.Channel],
    stop_in_background: Callable[[RunningService], asyncio.Task[None]],
) -> None:
    channel = channels(running.address)
    watch = _watch(channel, "")
    assert await _next_status(watch) == SERVING
    call = _hold(channel)
    await asyncio.wait_for(gate.entered.wait(), STEP)

    stopping = stop_in_background(running)
    assert await _next_status(watch) == NOT_SERVING
    watch.cancel()
    gate.release.set()

    assert await asyncio.wait_for(call, STEP) == b"done"
    assert await call.code() == grpc.StatusCode.OK
    await asyncio.wait_for(stopping, STEP)


async def test_stopped_server_refuses_new_calls(
    running: RunningService,
    services: ServiceRunner,
    channels: Callable[[str], aio.Channel],
) -> None:
    await services.stop(running, grace=0)
    check = health_check(channels(running.address))

    with pytest.raises(aio.AioRpcError) as raised:
        await check(HealthCheckRequest(), timeout=STEP)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
