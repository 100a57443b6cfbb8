"""What a hostile or clumsy caller can do at the gateway hurts no one else (issue 8): a call
without one whole gRPC message is refused at once instead of holding an upstream slot, errors
the caller caused never eject a healthy replica, oversize and non-JSON bodies never reach an
app, one client cannot take every token, and checkouts beyond what orders can do are refused
at once with a reason instead of queueing. Every refusal says why (an ErrorInfo reason)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc import aio

from scripts.fuzz.h2wire import H2Request, exchange
from scripts.fuzz.reply import End, Reply
from scripts.fuzz.reply import json_reasons as reply_json_reasons
from shop.inventory.v1 import inventory_pb2
from shopmesh.envoy.edge import ADAPTIVE_CONCURRENCY_ENABLED, RATE_LIMIT_ENABLED
from shopmesh.envoy.metrics import method_stat
from shopmesh.local.mesh import RunningMesh
from tests.support.calls import Outcome, bounded, call_raw, checkout, summary
from tests.support.clients import MeshClients, Shopper
from tests.support.polling import CALL_TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

PLACE_ORDER = "/shop.orders.v1.OrdersService/PlaceOrder"
GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
EJECTIONS = "cluster.svc_inventory.outlier_detection.ejections_enforced_total"
CONTROLLER = "http.ingress.adaptive_concurrency.gradient_controller."
BLOCKED = CONTROLLER + "rq_blocked"
RE_MEASURING = CONTROLLER + "min_rtt_calculation_active"
PROMPTLY = 1.0
"""Seconds within which the gateway must answer what it refuses itself (the figures, ≤ 10 ms,
are `make bench`'s; this only tells a refusal from a call that waited for a timeout)."""


def frame(message: bytes, compressed: int = 0) -> bytes:
    """A gRPC length-prefixed message."""
    return bytes([compressed]) + len(message).to_bytes(4, "big") + message


def grpc_request(
    mesh: RunningMesh,
    path: str,
    chunks: Sequence[bytes],
    method: str,
    te: bool,
    metadata: Sequence[tuple[str, str]],
) -> H2Request:
    return H2Request(
        headers=(
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", mesh.gateway_address),
            ("content-type", "application/grpc"),
            *((("te", "trailers"),) if te else ()),
            *metadata,
        ),
        chunks=tuple(chunks),
    )


async def raw_grpc(
    mesh: RunningMesh,
    path: str,
    chunks: Sequence[bytes],
    method: str = "POST",
    te: bool = True,
    metadata: Sequence[tuple[str, str]] = (),
) -> Reply:
    """One gRPC call over raw HTTP/2 whose body is exactly `chunks` (DATA frames); a protected
    method needs a shopper's `metadata` (the gateway checks the token before the body)."""
    host, port = mesh.gateway_address.rsplit(":", 1)
    request = grpc_request(mesh, path, chunks, method, te, metadata)
    return await exchange(host, int(port), request, CALL_TIMEOUT)


def reasons(reply: Reply) -> list[str]:
    """The ErrorInfo reasons of a gRPC reply (grpc-status-details-bin), in order."""
    return list(reply.reasons)


def http1(
    mesh: RunningMesh,
    method: str,
    path: str,
    body: bytes,
    content_type: str | None = "application/json",
    source: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to the gateway from the source address `source`."""
    host, port = mesh.gateway_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(
        host, int(port), timeout=CALL_TIMEOUT, source_address=(source, 0)
    )
    headers = {} if content_type is None else {"content-type": content_type}
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        received = {name.lower(): value for name, value in response.getheaders()}
        return response.status, received, response.read()
    finally:
        connection.close()


def json_reasons(body: bytes) -> list[str]:
    """The ErrorInfo reasons of a JSON google.rpc.Status, in order."""
    return list(reply_json_reasons(body))


async def upstream_requests(mesh: RunningMesh, service: str) -> int:
    """Requests the gateway has sent to `service` so far."""
    return (await mesh.admin("gateway").stats()).get(f"cluster.svc_{service}.upstream_rq_total", 0)


# --- a unary call carries exactly one whole message ----------------------------------------

MALFORMED = {
    "no body": [],
    "an empty DATA frame": [b""],
    "3 bytes of a frame header": [b"\x00\x00\x00"],
    "a length that lies": [b"\x00\x00\x00\x00\x09" + b"short"],
    "two messages": [frame(b""), frame(b"")],
    "compressed, no grpc-encoding": [frame(b"\x0a\x01x", compressed=1)],
    "an unknown flag": [frame(b"", compressed=7)],
}


@pytest.mark.parametrize("chunks", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_unary_call_without_one_whole_message_is_refused_at_the_edge(
    mesh: RunningMesh, shopper: Shopper, chunks: list[bytes]
) -> None:
    before = await upstream_requests(mesh, "orders")
    reply = await raw_grpc(mesh, PLACE_ORDER, chunks, metadata=shopper.metadata)
    assert reply.end is End.ANSWERED, reply.describe()
    assert reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], reply.describe()
    assert reasons(reply) == ["MALFORMED_MESSAGE"]
    assert reply.elapsed < PROMPTLY, reply.describe()
    assert await upstream_requests(mesh, "orders") == before


async def test_malformed_calls_beside_checkouts_fail_no_checkout(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    """The issue's outage: 3-byte and empty PlaceOrders at 12/s beside 10 checkouts/s, all
    signed in (so the malformed ones pass the token check and reach the framing check). Before,
    each held one of the gateway's upstream slots until PlaceOrder's 10 s timeout."""
    admin = mesh.admin("gateway")
    before = await admin.stats()
    seconds = 4.0
    placed = method_stat("svc_orders", "shop.orders.v1.OrdersService", "PlaceOrder", "total")
    malformed: list[Reply] = []
    checkouts: list[Outcome] = []

    async def paced(rate: float, call: object) -> None:
        calls = []
        for index in range(int(seconds * rate)):
            calls.append(asyncio.create_task(call(index)))  # type: ignore[operator]
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*calls)

    async def bad(index: int) -> None:
        chunks = [b"\x00\x00\x00"] if index % 2 else []
        malformed.append(await raw_grpc(mesh, PLACE_ORDER, chunks, metadata=shopper.metadata))

    async def good(_: int) -> None:
        checkouts.append(await checkout(mesh_clients, shopper))

    # The adaptive concurrency controller off: this is about what malformed calls cost the
    # others, not about how many checkouts at once orders takes (a controller re-measuring
    # its minimum on a busy machine may refuse one).
    await admin.runtime_modify({ADAPTIVE_CONCURRENCY_ENABLED: "false"})
    try:
        await asyncio.gather(paced(12, bad), paced(10, good))
    finally:
        await admin.runtime_modify({ADAPTIVE_CONCURRENCY_ENABLED: "true"})

    assert all(c.ok for c in checkouts), summary(checkouts)
    assert {(r.grpc_status, tuple(reasons(r))) for r in malformed} == {
        (grpc.StatusCode.INVALID_ARGUMENT.value[0], ("MALFORMED_MESSAGE",))
    }
    assert max(r.elapsed for r in malformed) < PROMPTLY
    # No malformed call reached orders: every PlaceOrder the gateway passed on was a checkout.
    after = await admin.stats()
    assert after[placed] - before.get(placed, 0) == len(checkouts)


# --- what the caller got wrong ejects no replica --------------------------------------------


async def test_errors_the_caller_caused_eject_no_replica(mesh: RunningMesh) -> None:
    """Each of these ejected one of the two inventory replicas before (5 consecutive 5xx, or 3
    resets)."""
    admin = mesh.admin("gateway")
    before = (await admin.stats()).get(EJECTIONS, 0)
    product = inventory_pb2.GetProductRequest(sku="STICKER-01").SerializeToString()
    rounds = 2 * mesh.topology.policies["inventory"].outlier_detection.consecutive_5xx + 2

    query = [await raw_grpc(mesh, f"{GET_PRODUCT}?x", [frame(product)]) for _ in range(rounds)]
    put = [await raw_grpc(mesh, GET_PRODUCT, [frame(product)], "PUT") for _ in range(rounds)]
    undecodable = [
        await raw_grpc(mesh, GET_PRODUCT, [frame(b"\xff\xff\xff\xff")]) for _ in range(rounds)
    ]
    http_put = [http1(mesh, "PUT", GET_PRODUCT, b"{}") for _ in range(rounds)]
    # No `te: trailers`, which gRPC requires: the gateway adds it (the app would reset the call).
    no_te = [await raw_grpc(mesh, GET_PRODUCT, [frame(product)], te=False) for _ in range(rounds)]

    unimplemented = grpc.StatusCode.UNIMPLEMENTED.value[0]
    for reply in query + put:
        assert (reply.grpc_status, reasons(reply)) == (unimplemented, ["UNKNOWN_METHOD"]), (
            reply.describe()
        )
    for reply in undecodable:
        assert reply.grpc_status == grpc.StatusCode.INVALID_ARGUMENT.value[0], reply.describe()
        assert reasons(reply), reply.describe()
    for reply in no_te:
        assert reply.grpc_status == grpc.StatusCode.OK.value[0], reply.describe()
    for status, _, body in http_put:
        assert (status, json_reasons(body)) == (404, ["UNKNOWN_METHOD"]), body

    assert (await admin.stats()).get(EJECTIONS, 0) == before
    flags = await admin.host_health()
    assert not any("/failed_outlier_check" in f for f in flags.get("svc_inventory", {}).values())


# --- bodies the gateway does not take -------------------------------------------------------


async def test_an_oversize_request_is_refused_at_the_gateway(mesh: RunningMesh) -> None:
    limit = mesh.topology.gateway.limits.max_request_bytes
    before = await upstream_requests(mesh, "inventory")
    huge = inventory_pb2.GetProductRequest(sku="x" * (2 * limit)).SerializeToString()

    async with aio.insecure_channel(
        mesh.gateway_address, options=[("grpc.max_send_message_length", 4 * limit)]
    ) as channel:
        outcome = await call_raw(channel, GET_PRODUCT, huge)
    assert (outcome.code, outcome.detail) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "REQUEST_TOO_LARGE",
    )
    status, _, body = await asyncio.to_thread(
        http1, mesh, "POST", GET_PRODUCT, json.dumps({"sku": "x" * (2 * limit)}).encode()
    )
    assert (status, json_reasons(body)) == (413, ["REQUEST_TOO_LARGE"]), body
    assert await upstream_requests(mesh, "inventory") == before


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
async def test_a_body_that_is_neither_grpc_nor_json_is_refused(
    mesh: RunningMesh, content_type: str | None
) -> None:
    before = await upstream_requests(mesh, "inventory")
    status, _, body = await asyncio.to_thread(
        http1, mesh, "POST", GET_PRODUCT, b'{"sku": "STICKER-01"}', content_type
    )
    assert (status, json_reasons(body)) == (415, ["UNSUPPORTED_MEDIA_TYPE"]), body
    assert await upstream_requests(mesh, "inventory") == before


# --- one caller cannot starve the others ----------------------------------------------------


async def test_one_client_cannot_take_the_tokens_of_the_others(mesh: RunningMesh) -> None:
    """127.0.0.2 calls as fast as it can, far beyond the bucket all callers share; once it is
    refused, 127.0.0.3 calls at a modest rate. The first is refused (RATE_LIMITED, with a retry
    delay); the second never is, because what 127.0.0.2's own bucket refuses takes nothing
    from the shared one."""
    shared = mesh.topology.gateway.local_rate_limit
    # Bounded: enough to outrun the shared bucket for a few seconds, never unbounded.
    budget = 10 * (shared.max_tokens + shared.tokens_per_fill)
    body = json.dumps({"sku": "STICKER-01"}).encode()
    loop = asyncio.get_running_loop()
    refused_once = asyncio.Event()
    modest_done = asyncio.Event()
    flooded: list[tuple[int, dict[str, str], bytes]] = []

    def call(source: str) -> tuple[int, dict[str, str], bytes]:
        return http1(mesh, "POST", GET_PRODUCT, body, source=source)

    with ThreadPoolExecutor(max_workers=16) as pool:

        async def flooding() -> None:
            while not modest_done.is_set() and len(flooded) < budget:
                reply = await loop.run_in_executor(pool, call, "127.0.0.2")
                flooded.append(reply)
                if reply[0] == 429:
                    refused_once.set()

        async def modest() -> list[int]:
            await asyncio.wait_for(refused_once.wait(), CALL_TIMEOUT)
            statuses = []
            for _ in range(10):
                statuses.append((await loop.run_in_executor(pool, call, "127.0.0.3"))[0])
                await asyncio.sleep(0.05)
            modest_done.set()
            return statuses

        floods = [asyncio.create_task(flooding()) for _ in range(12)]
        try:
            others = await modest()
        finally:
            modest_done.set()
            await asyncio.gather(*floods)

    refused = [(headers, reply) for status, headers, reply in flooded if status == 429]
    assert refused
    for headers, refusal in refused:
        assert json_reasons(refusal) == ["RATE_LIMITED"], refusal
        assert headers.get("retry-after") == "1"
    assert others == [200] * len(others), f"{len(flooded)} flood calls, {len(refused)} refused"


# --- beyond what orders can do: refused at once, never queued -------------------------------


async def test_checkouts_beyond_capacity_are_refused_with_a_reason_and_never_reach_orders(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    """With the rate limit off (it would refuse first), far more checkouts at once than orders
    can take: the adaptive concurrency controller refuses some (RESOURCE_EXHAUSTED OVERLOADED,
    with a retry delay, not UNAVAILABLE, which clients and the mesh retry); what it refuses
    never reaches orders, and what it admits completes."""
    admin = mesh.admin("gateway")
    before = await admin.stats()
    await admin.runtime_modify({RATE_LIMIT_ENABLED: "0"})
    try:
        outcomes = await bounded(
            160, 64, lambda _: checkout(mesh_clients, shopper, within=3 * CALL_TIMEOUT)
        )
    finally:
        await admin.runtime_modify({RATE_LIMIT_ENABLED: "100"})
    after = await admin.stats()

    refused = [o for o in outcomes if not o.ok]
    assert refused, "nothing was refused: the controller admitted 64 checkouts at once"
    assert {(o.code, o.detail) for o in refused} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
    }, summary(outcomes)
    assert max(o.elapsed for o in refused) < PROMPTLY
    assert after[BLOCKED] - before.get(BLOCKED, 0) == len(refused)
    admitted = len(outcomes) - len(refused)
    # What passed the controller, counted once a call however often the gateway retried it.
    passed = method_stat("svc_orders", "shop.orders.v1.OrdersService", "PlaceOrder", "total")
    assert after[passed] - before.get(passed, 0) == admitted


async def test_while_the_controller_re_measures_min_concurrency_checkouts_at_once_all_pass(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    """Envoy's controller re-measures the upstream's minimum latency when it starts and every
    min_rtt_interval after, admitting only min_concurrency calls at once meanwhile (issue 8: if
    you use it, prove it refuses nothing at low load). That many checkouts at once, sent while
    it re-measures, are all admitted. Restarts the gateway: a fresh controller re-measures
    first."""
    admin = mesh.admin("gateway")
    floor = mesh.topology.gateway.adaptive_concurrency.min_concurrency
    await mesh.restart_gateway(time.monotonic() + 30.0)
    assert (await admin.stats())[RE_MEASURING] == 1, "a fresh controller measures its minimum"

    outcomes = await bounded(floor, floor, lambda _: checkout(mesh_clients, shopper))

    assert all(o.ok for o in outcomes), summary(outcomes)
    after = await admin.stats()
    # Fewer calls than the window samples (request_count 20): it was on for every one of them.
    assert after[RE_MEASURING] == 1, "the window ended before the checkouts were sent"
    assert after.get(BLOCKED, 0) == 0
