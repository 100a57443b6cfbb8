"""The apps' call log (services/common/interceptors.py CallLogInterceptor), on a real grpc.aio
server with the services' interceptor chain: a line per call served with its status, at DEBUG;
a server-side failure at WARNING, at most once a second per status; the mesh's chatter left
out."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.errors import NotFound, Unavailable
from services.common.interceptors import (
    CallContextInterceptor,
    CallLogInterceptor,
    ErrorMappingInterceptor,
)
from tests.support.mesh import short_temp_dir
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio

LOGGER = "services.common.interceptors"
RUN = 20


async def answer(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"missing":
        raise NotFound("no such thing")
    if request == b"down":
        raise Unavailable("the database is away")
    return b"ok"


@pytest.fixture
async def channel() -> AsyncIterator[aio.Channel]:
    directory = short_temp_dir("smlog-")
    socket: Path = directory / "s.sock"
    server = aio.server(
        interceptors=[CallContextInterceptor(), CallLogInterceptor(), ErrorMappingInterceptor()]
    )
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Do": grpc.unary_unary_rpc_method_handler(answer),
        "Check": grpc.unary_unary_rpc_method_handler(answer),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Thing", handlers)])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers)]
    )
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    try:
        async with aio.insecure_channel(f"unix:{socket}") as open_channel:
            yield open_channel
    finally:
        await server.stop(0)
        shutil.rmtree(directory, ignore_errors=True)


def method(channel: aio.Channel, path: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A raw-bytes callable of `path` (no serializers: the handlers take and return bytes)."""
    return channel.unary_unary(path)


def served(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str]]:
    return [
        (record.levelno, record.__dict__["method"], record.__dict__["grpc_status"])
        for record in caplog.records
        if record.name == LOGGER and record.getMessage() == "call served"
    ]


async def lines_served(caplog: pytest.LogCaptureFixture, count: int) -> list[tuple[int, str, str]]:
    """The call lines once there are `count`: grpc sends a failed call's status as the handler
    aborts, so its client may go on before the call log's line is written."""

    async def written() -> bool:
        return len(served(caplog)) >= count

    await eventually(written, within=5, what=f"{count} call lines")
    return served(caplog)


async def test_every_call_is_logged_with_its_status(
    channel: aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    do = method(channel, "/test.Thing/Do")
    assert await do(b"hello") == b"ok"
    with pytest.raises(aio.AioRpcError) as missing:
        await do(b"missing")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError):
        await do(b"down")
    await method(channel, "/grpc.health.v1.Health/Check")(b"hello")

    assert await lines_served(caplog, 3) == [
        (logging.DEBUG, "/test.Thing/Do", "OK"),
        (logging.DEBUG, "/test.Thing/Do", "NOT_FOUND"),
        (logging.WARNING, "/test.Thing/Do", "UNAVAILABLE"),
    ]


async def test_at_info_only_server_side_failures_are_logged(
    channel: aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    do = method(channel, "/test.Thing/Do")
    await do(b"hello")
    for request in (b"missing", b"down"):
        with pytest.raises(aio.AioRpcError):
            await do(request)
    assert await lines_served(caplog, 1) == [(logging.WARNING, "/test.Thing/Do", "UNAVAILABLE")]


async def test_a_run_of_server_side_failures_is_one_warning_a_second_the_rest_at_debug(
    channel: aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    do = method(channel, "/test.Thing/Do")
    started = time.monotonic()
    for _ in range(RUN):
        with pytest.raises(aio.AioRpcError):
            await do(b"down")
    elapsed = time.monotonic() - started

    lines = await lines_served(caplog, RUN)
    assert len(lines) == RUN
    warnings = [line for line in lines if line[0] == logging.WARNING]
    assert 1 <= len(warnings) <= int(elapsed) + 1 < RUN
    assert {line[1:] for line in lines} == {("/test.Thing/Do", "UNAVAILABLE")}
