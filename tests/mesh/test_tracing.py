"""Tracing through the real mesh: one checkout is one trace with every hop in it (a call an app
makes is its sidecar's egress span, under the app's span that made it), a retried call shows
each attempt, every hop's logs carry the trace id, an outside caller cannot force or join a
trace, and with sampling at 0 nothing is traced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import uuid
from asyncio.subprocess import PIPE

import grpc
import pytest

from shop.orders.v1 import orders_pb2
from shop.users.v1 import users_pb2
from shopmesh.collector.spans import SpanRecord
from shopmesh.envoy.faults import Fault
from shopmesh.local import faults
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import COLLECTOR, RunningMesh
from shopmesh.local.ports import free_ports
from shopmesh.observe.traces import CLIENT, TraceReader, failed, grpc_status, is_attempt
from tests.support.cli import shopmesh, shopmesh_command, shopmesh_ok
from tests.support.clients import MeshClients, Shopper, gateway_clients
from tests.support.collector import running_collector
from tests.support.grpcurl import Grpcurl
from tests.support.mesh import running_mesh, short_temp_dir
from tests.support.observe import access_log
from tests.support.paths import ROOT
from tests.support.polling import CALL_TIMEOUT, eventually
from tests.support.traces import (
    APPS,
    CHECKOUT_SERVICES,
    TRACE_DEADLINE,
    reader,
    trace_id_of,
    trace_of,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

SAGA_STEPS = (
    "saga VALIDATE_USER",
    "saga RESERVE_AND_PRICE",
    "saga CHARGE_PAYMENT",
    "saga COMMIT_RESERVATION",
)
CALLS_MADE = (
    ("saga VALIDATE_USER", "egress /shop.users.v1.UsersService/GetUser"),
    ("saga RESERVE_AND_PRICE", "egress /shop.inventory.v1.InventoryService/ReserveStock"),
    ("saga CHARGE_PAYMENT", "egress /shop.payments.v1.PaymentsService/Charge"),
    ("saga COMMIT_RESERVATION", "egress /shop.inventory.v1.InventoryService/CommitReservation"),
    ("outbox deliver", "egress /shop.notifications.v1.NotificationsService/PublishOrderEvents"),
)
"""The calls orders makes in a checkout of one item: the span making each, and the sidecar's."""
SERVER = 2
"""OTLP's span kind of a call served."""
HOSTILE_TRACE_ID = "ab" * 16
HOSTILE_HEADERS = (
    ("traceparent", f"00-{HOSTILE_TRACE_ID}-{'cd' * 8}-01"),
    ("x-request-id", "11111111-2222-4333-8444-555555555555"),
    ("x-client-trace-id", "forced"),
    ("x-envoy-force-trace", "true"),
    ("baggage", "tenant=mallory,role=admin"),
)


async def traced_checkout(clients: MeshClients, shopper: Shopper) -> tuple[orders_pb2.Order, str]:
    """`shopper` places one order; the order and the trace id the gateway returned."""
    request = orders_pb2.PlaceOrderRequest(
        idempotency_key=f"order-{uuid.uuid4().hex}",
        user_id=shopper.user_id,
        items=[orders_pb2.OrderItem(sku="STICKER-01", quantity=1)],
        payment_token="tok_visa",
    )
    call = clients.orders.PlaceOrder(request, timeout=CALL_TIMEOUT, metadata=shopper.metadata)
    response = await call
    return response.order, trace_id_of(await call.initial_metadata())


def by_id(spans: list[SpanRecord]) -> dict[str, SpanRecord]:
    return {span.span_id: span for span in spans}


async def test_a_checkout_is_one_trace_with_every_hop(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    # Reflection first: its spans, if there were any, would be exported before the checkout's.
    listed = await Grpcurl(traced_mesh.gateway_address).run(None, "list")
    assert "shop.orders.v1.OrdersService" in listed.stdout, listed.explain()
    order, trace_id = await traced_checkout(traced_clients, traced_shopper)
    assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    egress_names = [egress for _, egress in CALLS_MADE]
    spans = await trace_of(
        traced_mesh, trace_id, CHECKOUT_SERVICES, (*SAGA_STEPS, "outbox deliver", *egress_names)
    )

    assert reader(traced_mesh).of_order(order.order_id) == trace_id
    roots = [span for span in spans if span.parent_span_id == ""]
    assert [(root.service, root.name) for root in roots] == [
        ("gateway", "edge /shop.orders.v1.OrdersService/PlaceOrder")
    ]
    spans_by_id = by_id(spans)
    assert all(span.parent_span_id in spans_by_id for span in spans if span not in roots)
    # Each app's server span is a child of its own sidecar's attempt at the app, itself inside
    # the sidecar's inbound span.
    served = [span for span in spans if span.service in APPS and span.kind == SERVER]
    assert {span.service for span in served} == set(APPS)
    for span in served:
        attempt = spans_by_id[span.parent_span_id]
        assert (attempt.service, attempt.name) == (f"{span.service}-sidecar", "attempt local_app")
        inbound = spans_by_id[attempt.parent_span_id]
        assert (inbound.service, inbound.name) == (attempt.service, f"inbound {span.name}")
    # A call an app makes has no span in the app: its sidecar's egress span is the call, a
    # child of the app's span that made it.
    assert not [span for span in spans if span.service in APPS and span.kind == CLIENT]
    egress = [span for span in spans if span.name.startswith("egress ")]
    made = [(spans_by_id[span.parent_span_id].name, span.name) for span in egress]
    assert sorted(made) == sorted(CALLS_MADE)
    assert {span.service for span in egress} == {"orders-sidecar"}
    assert {spans_by_id[span.parent_span_id].service for span in egress} == {"orders"}
    steps = [span for span in spans if span.name.startswith("saga ")]
    assert [span.name for span in steps] == list(SAGA_STEPS)
    assert all(span.attributes["order.id"] == order.order_id for span in steps)
    assert not [span for span in spans if failed(span)]
    traces = reader(traced_mesh)
    every_name = {s.name for t in traces.recent(1000) for s in traces.spans(t.trace_id)}
    assert not [name for name in every_name if "grpc.health" in name or "Reflection" in name]


async def test_a_retried_call_shows_every_attempt(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    """With payments failing 30 % of calls, checkouts are placed (at most 30: all of them
    without a retry has odds of 0.7^30) until one needed a retry of Charge; its trace shows
    the failed attempts and the one that succeeded, each at payments' sidecar."""
    charge = "egress /shop.payments.v1.PaymentsService/Charge"
    await faults.inject(traced_mesh, "payments", Fault.of(abort_percent=30))
    try:
        for _ in range(30):
            order, trace_id = await traced_checkout(traced_clients, traced_shopper)
            assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED
            spans = await trace_of(traced_mesh, trace_id, CHECKOUT_SERVICES, SAGA_STEPS)
            # When every attempt of one Charge fails, the saga calls Charge again: that trace
            # has a failed egress span and the one that succeeded, which is the one to look at.
            egress = next(
                s
                for s in spans
                if s.service == "orders-sidecar" and s.name == charge and not failed(s)
            )
            attempts = [s for s in spans if s.parent_span_id == egress.span_id and is_attempt(s)]
            if len(attempts) > 1:
                break
        else:
            raise AssertionError("no checkout of 30 needed a retry with 30 % of Charge failing")
    finally:
        await faults.clear(traced_mesh, "payments")
    *retried, last = sorted(attempts, key=lambda span: span.start_ns)
    assert all(failed(span) and grpc_status(span) == "14" for span in retried)
    assert not failed(last)
    assert not failed(egress)
    # The aborted attempts reached payments' sidecar, which answered without the app.
    attempt_ids = {span.span_id for span in attempts}
    inbound = [
        s
        for s in spans
        if s.service == "payments-sidecar"
        and s.name.startswith("in")
        and s.parent_span_id in attempt_ids
    ]
    assert len(inbound) == len(attempts)
    assert sum(failed(span) for span in inbound) == len(retried)
    # Only the attempt that succeeded reached the app (an aborted one, even of a Charge the saga
    # called again, never does).
    served = [s for s in spans if s.service == "payments" and s.kind == SERVER]
    assert len(served) == 1


async def test_every_hop_logs_the_trace_id(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    """Every Envoy's access log and every app's log has lines with the checkout's trace id,
    and the whole checkout shares one request id."""
    _, trace_id = await traced_checkout(traced_clients, traced_shopper)
    await trace_of(traced_mesh, trace_id, CHECKOUT_SERVICES)
    paths = traced_mesh.paths
    services = {pod.service for pod in traced_mesh.pods.values()}

    def with_trace(log: str) -> list[dict[str, object]]:
        return [entry for entry in access_log(paths.log(log)) if entry["trace_id"] == trace_id]

    def app_lines(pod: str) -> list[str]:
        return [
            line for line in paths.log(f"{pod}.app").read_text().splitlines() if trace_id in line
        ]

    request_ids: set[object] = set()

    async def every_hop_logged() -> bool:
        request_ids.clear()
        for service in services:
            pods = [pod.name for pod in traced_mesh.pods.values() if pod.service == service]
            entries = [entry for pod in pods for entry in with_trace(f"{pod}.access")]
            if not entries or not any(app_lines(pod) for pod in pods):
                return False
            request_ids.update(entry["request_id"] for entry in entries)
        gateway = with_trace("gateway.access")
        request_ids.update(entry["request_id"] for entry in gateway)
        return bool(gateway)

    await eventually(every_hop_logged, 10.0, f"every hop's logs to carry trace {trace_id}")
    assert len(request_ids) == 1, request_ids
    orders_served = [line for line in app_lines("orders-0") if "PlaceOrder" in line]
    assert orders_served
    assert '"span_id"' in orders_served[0]


async def test_an_outside_caller_cannot_join_a_trace(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    """Tracing headers from outside are dropped at the gateway: the call gets a fresh trace."""
    request = users_pb2.CreateUserRequest(
        request_id=f"req-{uuid.uuid4().hex}",
        email=f"hostile-{uuid.uuid4().hex[:8]}@example.com",
        display_name="Mallory",
    )
    call = traced_clients.users.CreateUser(request, metadata=HOSTILE_HEADERS, timeout=CALL_TIMEOUT)
    await call
    trace_id = trace_id_of(await call.initial_metadata())
    assert trace_id != HOSTILE_TRACE_ID
    spans = await trace_of(traced_mesh, trace_id, ("gateway", "users-sidecar", "users"))
    assert reader(traced_mesh).spans(HOSTILE_TRACE_ID) == []
    (root,) = [span for span in spans if span.parent_span_id == ""]
    assert root.service == "gateway"

    # Nor can it carry baggage in: what orders stores of a checkout's origin is its own.
    placed = orders_pb2.PlaceOrderRequest(
        idempotency_key=f"order-{uuid.uuid4().hex}",
        user_id=traced_shopper.user_id,
        items=[orders_pb2.OrderItem(sku="STICKER-01", quantity=1)],
        payment_token="tok_visa",
    )
    hostile = (*HOSTILE_HEADERS, *traced_shopper.metadata)
    order = (
        await traced_clients.orders.PlaceOrder(placed, metadata=hostile, timeout=CALL_TIMEOUT)
    ).order
    with sqlite3.connect(traced_mesh.paths.database("orders")) as db:
        (stored,) = db.execute(
            "SELECT origin FROM saga_state WHERE order_id = ?", (order.order_id,)
        ).fetchone()
    origin = json.loads(stored)
    assert set(origin) == {"traceparent", "x-request-id"}, origin
    assert HOSTILE_TRACE_ID not in origin["traceparent"]


async def test_with_sampling_at_zero_nothing_is_traced() -> None:
    """Checkouts, with and without tracing headers from outside, leave no span once every
    process has flushed on its way down."""
    async with running_mesh(sampling=0.0) as mesh:
        async with gateway_clients(mesh) as clients:
            shopper = await clients.create_user()
            order = await clients.place_order(shopper)
            await clients.wait_for_notification(shopper, order.order_id)
            hostile = (*HOSTILE_HEADERS, *shopper.metadata)
            request = users_pb2.GetUserRequest(user_id=shopper.user_id)
            await clients.users.GetUser(request, metadata=hostile, timeout=CALL_TIMEOUT)
            missing = users_pb2.GetUserRequest(user_id="usr_missing")
            with pytest.raises(grpc.aio.AioRpcError):
                await clients.users.GetUser(missing, metadata=hostile, timeout=5)
        await mesh.stop()
        assert mesh.paths.traces.exists(), "the collector did not run"
        assert reader(mesh).count() == 0


async def test_the_trace_commands_show_a_checkout(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    """`shopmesh traces` lists it, and `shopmesh trace` (by id, --order, --last) draws it."""
    order, trace_id = await traced_checkout(traced_clients, traced_shopper)
    await trace_of(traced_mesh, trace_id, CHECKOUT_SERVICES, (*SAGA_STEPS, "outbox deliver"))
    state = ("--state-dir", str(traced_mesh.state_dir))

    listed = json.loads(await shopmesh_ok("traces", *state, "--output", "json", "-n", "50"))
    assert trace_id in [entry["trace_id"] for entry in listed]
    by_order = json.loads(
        await shopmesh_ok("trace", *state, "--order", order.order_id, "--output", "json")
    )
    assert {span["trace_id"] for span in by_order} == {trace_id}
    assert set(CHECKOUT_SERVICES) <= {span["service"] for span in by_order}

    drawn = await shopmesh_ok("trace", trace_id, *state)
    for expected in ("edge OrdersService/PlaceOrder", "saga CHARGE_PAYMENT", "outbox deliver"):
        assert expected in drawn, drawn
    assert "1/1" in drawn  # the attempt column
    assert "trace " in await shopmesh_ok("trace", "--last", *state)


async def test_tap_streams_the_calls_through_a_service(
    traced_mesh: RunningMesh, traced_clients: MeshClients, traced_shopper: Shopper
) -> None:
    """`shopmesh tap payments --method Charge` prints each Charge payments served, with the
    caller's SPIFFE ID and the trace id, and ends after --max calls."""
    command = [
        *shopmesh_command(),
        "tap",
        "payments",
        "--state-dir",
        str(traced_mesh.state_dir),
        "--method",
        "Charge",
        "--max",
        "2",
        "--seconds",
        "60",
        "--output",
        "json",
    ]
    tap = await asyncio.create_subprocess_exec(*command, stdout=PIPE, stderr=PIPE, cwd=ROOT)
    try:
        traces: list[str] = []
        # The tap starts at the end of the logs: keep checking out until it has seen two.
        while tap.returncode is None and len(traces) < 20:
            traces.append((await traced_checkout(traced_clients, traced_shopper))[1])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tap.wait(), 0.5)
        output, errors = await asyncio.wait_for(tap.communicate(), CALL_TIMEOUT)
    finally:
        if tap.returncode is None:
            tap.kill()
            await tap.wait()
    assert tap.returncode == 0, errors.decode()
    tapped = [json.loads(line) for line in output.decode().splitlines()]
    assert len(tapped) == 2, tapped
    for call in tapped:
        assert call["direction"] == "inbound"
        assert call["peer"] == "spiffe://shop.local/ns/shop/sa/orders"
        assert call["method"] == "/shop.payments.v1.PaymentsService/Charge"
        assert call["status"] == "OK"
        assert call["trace_id"] in traces


async def test_spans_go_to_the_users_own_collector() -> None:
    """`shopmesh up --otlp-endpoint HOST:PORT`: every app and Envoy exports there over TCP
    (here a second instance of the collector, as a Jaeger would listen), and the mesh runs
    no collector of its own."""
    directory = short_temp_dir("smo-")
    (port,) = free_ports("127.0.0.1", 1)
    theirs = TraceReader(directory / "theirs.db")
    try:
        with running_collector(f"127.0.0.1:{port}", theirs.path, lambda: listening(port)):
            async with running_mesh(otlp_endpoint=f"127.0.0.1:{port}") as mesh:
                assert COLLECTOR not in mesh.state.processes
                with pytest.raises(MeshError, match="runs no collector"):
                    await mesh.restart(COLLECTOR, 5.0)
                listed = await asyncio.to_thread(
                    shopmesh, "traces", "--state-dir", str(mesh.state_dir)
                )
                assert listed.returncode == 1
                assert "--otlp-endpoint" in listed.stderr
                async with gateway_clients(mesh) as clients:
                    shopper = await clients.create_user()
                    order, trace_id = await traced_checkout(clients, shopper)

                async def arrived() -> bool:
                    # Every service's spans, and the one naming the order (spans arrive in
                    # batches, each process on its own schedule).
                    services = {span.service for span in theirs.spans(trace_id)}
                    found = theirs.of_order(order.order_id)
                    return set(CHECKOUT_SERVICES) <= services and found is not None

                await eventually(arrived, TRACE_DEADLINE, "the spans at the user's collector")
                assert theirs.of_order(order.order_id) == trace_id
                assert not mesh.paths.traces.exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
