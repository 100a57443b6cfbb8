"""Plain helpers for the tests that drive a running local mesh (tests/mesh/test_retries.py,
test_timeouts.py, test_circuit_breaking.py, test_outlier.py, test_graceful.py,
test_isolation.py): clients through the gateway and through a pod's egress socket, bounded
concurrent load, Envoy stat deltas, per-pod faults, access logs, and what sockets a process
holds (read from /proc: psutil is not a dependency).

Every call is bounded in time and every load loop in count; nothing here assumes a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import ipaddress
import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio

from services.common.status import error_info
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.render import FAULT_RUNTIME
from shopmesh.supervisor import RunningMesh
from tests.mesh.conftest import MeshClients, eventually

T = TypeVar("T")

CALL_TIMEOUT = 20.0
"""Seconds any one call may take before it counts as failed (far above every route budget)."""
STICKER = "STICKER-01"
"""The seeded product with the most stock (1000): what load tests buy, one at a time."""

# Test clients must not retry on their own: every success has to be the mesh's doing. Even
# gRPC's transparent retries (of calls that never reached the server) are off on these
# channels; the gateway clients of conftest (checkouts) keep them, which cannot repeat a call
# a server has seen.
CHANNEL_OPTIONS = [("grpc.enable_retries", 0)]


def channel(address: str) -> aio.Channel:
    """A plaintext channel to the gateway (host:port) or an egress socket (unix:/path)."""
    return aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def egress(mesh: RunningMesh, pod: str) -> str:
    """The gRPC target of a pod's egress socket: calling it is calling as that pod's app."""
    return f"unix:{mesh.pod(pod).egress_socket}"


# --- outcomes and bounded load --------------------------------------------------------------


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


# --- calls ----------------------------------------------------------------------------------


async def checkout(
    clients: MeshClients, user_id: str, key: str | None = None, within: float = CALL_TIMEOUT
) -> Outcome:
    """One PlaceOrder through the gateway (one sticker, a card that charges), never retried
    by the client; OK only if the order came back CONFIRMED (otherwise `detail` is the order
    status or the error's ErrorInfo reason)."""
    started = time.monotonic()
    try:
        order = await clients.place_order(user_id, idempotency_key=key, within=within)
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


def get_payment(
    target: aio.Channel, payment_id: str, timeout: float | None = CALL_TIMEOUT
) -> Awaitable[Any]:
    """PaymentsService.GetPayment(payment_id) (an awaitable call)."""
    stub = payments_pb2_grpc.PaymentsServiceStub(target)
    return stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id), timeout=timeout)


def get_user(
    target: aio.Channel, user_id: str, timeout: float | None = CALL_TIMEOUT
) -> Awaitable[Any]:
    """UsersService.GetUser(user_id) (an awaitable call)."""
    stub = users_pb2_grpc.UsersServiceStub(target)
    return stub.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=timeout)


def _raw(message: bytes) -> bytes:
    return message


async def call_path(target: aio.Channel, path: str) -> Outcome:
    """Call any gRPC path with an empty request message (deadline: CALL_TIMEOUT)."""
    method = target.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
    return await timed(method(b"", timeout=CALL_TIMEOUT))


# --- Envoy ----------------------------------------------------------------------------------


class Stats:
    """Counters of one Envoy (pod name or "gateway"), read before and after an experiment."""

    def __init__(self, mesh: RunningMesh, name: str) -> None:
        self.mesh = mesh
        self.name = name
        self.before: dict[str, int] = {}

    async def snapshot(self) -> Stats:
        self.before = await self.mesh.envoy_stats(self.name)
        return self

    async def delta(self, *names: str) -> dict[str, int]:
        """How much each stat grew since the snapshot (0 for stats that do not exist)."""
        now = await self.mesh.envoy_stats(self.name)
        return {name: now.get(name, 0) - self.before.get(name, 0) for name in names}


async def stats_of(mesh: RunningMesh, name: str) -> Stats:
    """A Stats of `name` with its snapshot taken now."""
    return await Stats(mesh, name).snapshot()


async def host_flags(mesh: RunningMesh, caller: str, pod: str) -> str:
    """The health flags the Envoy `caller` holds for replica `pod` ("healthy", or e.g.
    "/failed_active_hc/failed_outlier_check")."""
    hosts = await mesh.upstream_health(caller, mesh.pod(pod).service)
    return hosts[mesh.pod(pod).inbound]


async def pod_fault(mesh: RunningMesh, pod: str, **keys: int) -> None:
    """Fault-inject one replica only (its own inbound sidecar), through the same runtime keys
    `RunningMesh.fault` sets for every replica: abort_percent, abort_grpc_status,
    delay_percent, delay_ms (names of render.FAULT_RUNTIME). No keys: clear them all."""
    values = {getattr(FAULT_RUNTIME, key.name): "" for key in dataclasses.fields(FAULT_RUNTIME)}
    values.update({getattr(FAULT_RUNTIME, name): str(value) for name, value in keys.items()})
    status, body = await mesh.admin(
        pod, f"/runtime_modify?{urllib.parse.urlencode(values)}", "POST"
    )
    assert status == 200, body


def access_log(path: Path, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every entry of a JSON access log (one JSON object a line); with `since`, only the
    requests that started at or after it."""
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if since is None:
        return entries
    return [entry for entry in entries if datetime.fromisoformat(entry["time"]) >= since]


# --- databases ------------------------------------------------------------------------------


def charges_per_order(db_path: Path) -> dict[str, int]:
    """order_id -> number of payments rows, read from the payments database file through a
    separate read-only connection (the service owns the file; the test only looks)."""
    uri = f"file:{db_path}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        rows = db.execute("SELECT order_id, COUNT(*) FROM payments GROUP BY order_id")
        return {str(order_id): int(count) for order_id, count in rows}


# --- sockets of a process (/proc) ---------------------------------------------------------

_TCP_LISTEN = "0A"
_UNIX_ACCEPTING = 0x00010000  # __SO_ACCEPTCON: a listening Unix socket


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket of a process: local address and port, and whether it listens."""

    address: str
    port: int
    listening: bool


@dataclass(frozen=True)
class ProcessSockets:
    """Every socket a process holds, from /proc/<pid>/fd matched against /proc/<pid>/net."""

    tcp: tuple[TcpSocket, ...]
    unix_listening: tuple[str, ...]
    """Paths of the Unix sockets it listens on."""

    @property
    def tcp_listening(self) -> tuple[TcpSocket, ...]:
        return tuple(sock for sock in self.tcp if sock.listening)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(entry)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _ip(hex_address: str) -> str:
    """A /proc/net/tcp{,6} address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def process_sockets(pid: int) -> ProcessSockets:
    """The TCP sockets and listening Unix sockets held by process `pid`."""
    inodes = _socket_inodes(pid)
    tcp: list[TcpSocket] = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if int(fields[9]) in inodes:
                address, port = fields[1].split(":")
                tcp.append(TcpSocket(_ip(address), int(port, 16), fields[3] == _TCP_LISTEN))
    unix: list[str] = []
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in inodes and int(fields[3], 16) & _UNIX_ACCEPTING:
            unix.append(fields[7])
    return ProcessSockets(tuple(tcp), tuple(unix))


# --- JSON through the gateway ---------------------------------------------------------------


@dataclass(frozen=True)
class JsonReply:
    """An HTTP/1.1 reply of the gateway's gRPC-JSON transcoder."""

    status: int
    body: Any
    elapsed: float


def _post_json(target: str, path: str, body: Any, headers: dict[str, str]) -> JsonReply:
    host, port = target.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT)
    started = time.monotonic()
    try:
        connection.request(
            "POST", path, json.dumps(body).encode(), {"content-type": "application/json", **headers}
        )
        response = connection.getresponse()
        payload = response.read()
        return JsonReply(response.status, json.loads(payload), time.monotonic() - started)
    finally:
        connection.close()


async def post_json(
    target: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> JsonReply:
    """POST JSON to the gateway with extra `headers`; the only deadline on the client side is
    the socket's CALL_TIMEOUT, so whatever ends the call sooner is the mesh's doing."""
    return await asyncio.to_thread(_post_json, target, path, body, headers or {})
