"""Calls through a running mesh and their outcomes: one call, a bounded batch, or steady load
for the length of a block. Every call is bounded in time and every load loop in count."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio

from services.common.status import error_info
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from tests.support.clients import MeshClients, Shopper
from tests.support.polling import CALL_TIMEOUT, eventually

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

MALFORMED = b"\x0a\x05ab"
"""A request body no message type decodes: field 1, length-delimited, 5 bytes long, but only
2 follow."""
STICKER = "STICKER-01"
"""The seeded product with the most stock (1000): what load tests buy, one at a time."""


@dataclass(frozen=True)
class Outcome:
    """How one call ended: its status code, how long it took, and the ErrorInfo reason (or
    the order status for checkouts) to make failures readable."""

    code: grpc.StatusCode
    elapsed: float
    detail: str = ""
    order_id: str = ""

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def failed(error: aio.AioRpcError, started: float) -> Outcome:
    """The outcome of a call that failed: its code, and its ErrorInfo reason if it has one
    (Envoy's own replies have none: then the status message)."""
    info = error_info(error)
    detail = info.reason if info is not None else (error.details() or "")
    return Outcome(error.code(), time.monotonic() - started, detail)


async def timed(call: Awaitable[Any]) -> Outcome:
    """Await one unary call; its outcome (never raises for a gRPC error)."""
    started = time.monotonic()
    try:
        await call
    except aio.AioRpcError as error:
        return failed(error, started)
    return Outcome(grpc.StatusCode.OK, time.monotonic() - started)


def _raw(message: bytes) -> bytes:
    return message


async def call_raw(
    target: aio.Channel,
    path: str,
    message: bytes = b"",
    within: float = CALL_TIMEOUT,
    metadata: Metadata = (),
) -> Outcome:
    """Call any gRPC path with an already serialized request (empty by default); through the
    gateway, a protected method needs a shopper's `metadata`."""
    method = target.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
    return await timed(method(message, timeout=within, metadata=metadata))


def method_path(method: MethodDescriptor) -> str:
    """The gRPC path of a method: /package.Service/Method."""
    return f"/{method.containing_service.full_name}/{method.name}"


async def _one(message: bytes) -> AsyncIterator[bytes]:
    yield message


async def call_raw_any(
    target: aio.Channel,
    method: MethodDescriptor,
    message: bytes,
    within: float = CALL_TIMEOUT,
    metadata: Metadata = (),
) -> None:
    """Call `method`, of whatever kind, with one already serialized request (and `metadata`),
    reading every response; raises AioRpcError when the call fails."""
    path = method_path(method)
    options: dict[str, Any] = {"timeout": within, "metadata": metadata}
    if method.client_streaming:
        stream = target.stream_stream(path, request_serializer=_raw, response_deserializer=_raw)
        async for _ in stream(_one(message), **options):
            pass
    elif method.server_streaming:
        responses = target.unary_stream(path, request_serializer=_raw, response_deserializer=_raw)
        async for _ in responses(message, **options):
            pass
    else:
        await target.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)(
            message, **options
        )


async def bounded(count: int, in_flight: int, call: Callable[[int], Awaitable[T]]) -> list[T]:
    """Run `call(0) ... call(count - 1)` with at most `in_flight` running at once."""
    results: list[T | None] = [None] * count
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:
            results[index] = await call(index)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(in_flight, count)):
            group.create_task(worker())
    return [result for result in results if result is not None]


@dataclass
class Load:
    """Calls made by `in_flight` workers until stopped (or `limit` calls in all)."""

    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]

    async def until(self, count: int, within: float) -> None:
        """Wait until `count` calls in all have ended (fails after `within` seconds)."""

        async def done() -> bool:
            return len(self.outcomes) >= count

        await eventually(done, within, f"{count} calls to have completed")


@contextlib.asynccontextmanager
async def running_load(
    call: Callable[[], Awaitable[Outcome]], in_flight: int, limit: int
) -> AsyncIterator[Load]:
    """Keep `in_flight` calls of `call` going for the body of the `async with`, at most `limit`
    calls in all; the in-flight ones finish before it exits."""
    load = Load()
    started = 0

    async def worker() -> None:
        nonlocal started
        while not load.stop.is_set() and started < limit:
            started += 1
            load.outcomes.append(await call())

    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(worker())
        try:
            yield load
        finally:
            load.stop.set()


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Outcomes counted by code and detail, for assertion messages."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        key = f"{outcome.code.name} {outcome.detail}".strip()
        counts[key] = counts.get(key, 0) + 1
    return counts


async def checkout(
    clients: MeshClients, shopper: Shopper, key: str | None = None, within: float = CALL_TIMEOUT
) -> Outcome:
    """One PlaceOrder through the gateway as `shopper` (one sticker, a card that charges), never
    retried by the client; OK only if the order came back CONFIRMED (otherwise `detail` is the order
    status or the error's ErrorInfo reason)."""
    started = time.monotonic()
    try:
        order = await clients.place_order(shopper, idempotency_key=key, within=within)
    except aio.AioRpcError as error:
        return failed(error, started)
    elapsed = time.monotonic() - started
    if order.status != orders_pb2.ORDER_STATUS_CONFIRMED:
        status = orders_pb2.OrderStatus.Name(order.status)
        return Outcome(grpc.StatusCode.UNKNOWN, elapsed, status, order.order_id)
    return Outcome(grpc.StatusCode.OK, elapsed, "CONFIRMED", order.order_id)


def get_product(
    target: aio.Channel, sku: str = STICKER, timeout: float | None = CALL_TIMEOUT
) -> Awaitable[Any]:
    """InventoryService.GetProduct(sku) (an awaitable call)."""
    stub = inventory_pb2_grpc.InventoryServiceStub(target)
    return stub.GetProduct(inventory_pb2.GetProductRequest(sku=sku), timeout=timeout)


def release_nothing(target: aio.Channel, timeout: float | None = CALL_TIMEOUT) -> Awaitable[Any]:
    """InventoryService.ReleaseStock naming no order (an awaitable call), which every inventory
    app refuses at once, before it touches its database: INVALID_ARGUMENT (see
    RELEASED_NOTHING). The call of tests that play the orders app towards inventory: a method
    orders is granted (unlike GetProduct, which it does not need), as cheap as a read, and one
    that changes nothing."""
    stub = inventory_pb2_grpc.InventoryServiceStub(target)
    return stub.ReleaseStock(inventory_pb2.ReleaseStockRequest(), timeout=timeout)


RELEASED_NOTHING = "INVALID_ARGUMENT INVALID_ARGUMENT"
"""How `summary` counts release_nothing's answer from an inventory app."""


def answered(outcome: Outcome) -> bool:
    """True when release_nothing reached an inventory app and the app answered it."""
    return outcome.code is grpc.StatusCode.INVALID_ARGUMENT


def get_payment(
    target: aio.Channel,
    payment_id: str,
    timeout: float | None = CALL_TIMEOUT,
    metadata: Metadata = (),
) -> Awaitable[Any]:
    """PaymentsService.GetPayment(payment_id) (an awaitable call); through the gateway, as the
    shopper whose `metadata` it sends."""
    stub = payments_pb2_grpc.PaymentsServiceStub(target)
    request = payments_pb2.GetPaymentRequest(payment_id=payment_id)
    return stub.GetPayment(request, timeout=timeout, metadata=metadata)


def get_user(
    target: aio.Channel,
    user_id: str,
    timeout: float | None = CALL_TIMEOUT,
    metadata: Metadata = (),
) -> Awaitable[Any]:
    """UsersService.GetUser(user_id) (an awaitable call); through the gateway, as the shopper
    whose `metadata` it sends."""
    stub = users_pb2_grpc.UsersServiceStub(target)
    request = users_pb2.GetUserRequest(user_id=user_id)
    return stub.GetUser(request, timeout=timeout, metadata=metadata)
