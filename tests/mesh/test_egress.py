"""Caller sidecar -> callee sidecar with real Envoys: the app's egress socket routes by gRPC
service name, the hop between the sidecars is mTLS with the caller's identity, and the caller's
active gRPC health checks pass the callee's mTLS and RBAC.

Here the test plays orders' app: it calls through orders-0's egress socket to payments-0,
whose sidecar fronts a health-only app (so a call RBAC lets through ends UNIMPLEMENTED there).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from services.common.config import ServiceConfig
from services.common.server import App, start
from shopmesh.layout import Pod, PodPorts
from tests.support.envoy import (
    EnvoyProcess,
    StartEnvoy,
    issue_identities,
    local_layout,
    write_sidecar,
)
from tests.support.paths import TOPOLOGY
from tests.support.polling import eventually

CHARGE = "/shop.payments.v1.PaymentsService/Charge"


@dataclass
class Pair:
    caller: EnvoyProcess
    callee: EnvoyProcess
    egress: str
    callee_inbound: int


@pytest.fixture
async def pair(socket_dir: Path, envoys: StartEnvoy) -> AsyncIterator[Pair]:
    topology = TOPOLOGY
    payments, orders = Pod("payments", "payments-0"), Pod("orders", "orders-0")

    # The callee first: the caller's STATIC cluster needs the port it bound.
    callee_layout = local_layout(topology, socket_dir)
    issue_identities(topology, callee_layout.state.certs)
    callee = await envoys(write_sidecar(topology, callee_layout, payments, socket_dir))
    inbound = await callee.listener_port("inbound")
    app = await start(
        ServiceConfig(
            "payments",
            f"unix:{callee_layout.app_socket(payments)}",
            socket_dir / "payments.db",
            grace_seconds=0,
        ),
        App([]),
    )
    # Callers health-check the service by its gRPC name; a real app reports it SERVING.
    await app.health.set(
        topology.services["payments"].grpc_service, health_pb2.HealthCheckResponse.SERVING
    )
    try:
        # Other upstreams of orders stay at port 0: unreachable, and not used here.
        layout = local_layout(topology, socket_dir, {payments.name: PodPorts(inbound, 0, 0)})
        caller = await envoys(write_sidecar(topology, layout, orders, socket_dir))
        yield Pair(
            caller=caller,
            callee=callee,
            egress=f"unix:{layout.egress_socket(orders)}",
            callee_inbound=inbound,
        )
    finally:
        await app.stop(0)


def _raw(message: bytes) -> bytes:
    return message


async def call(address: str, path: str) -> grpc.StatusCode:
    async with aio.insecure_channel(address) as channel:
        method = channel.unary_unary(path, request_serializer=_raw, response_deserializer=_raw)
        try:
            await method(b"", timeout=5)
        except aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def test_egress_reaches_the_callee_app_as_the_caller(pair: Pair) -> None:
    assert await call(pair.egress, CHARGE) == grpc.StatusCode.UNIMPLEMENTED
    callee = await pair.callee.stats()
    assert callee["http.inbound.rbac.allowed"] >= 1
    caller = await pair.caller.stats()
    assert caller["cluster.svc_payments.upstream_rq_completed"] >= 1
    assert caller["cluster.svc_payments.ssl.handshake"] >= 1


async def test_egress_refuses_services_the_caller_does_not_call(pair: Pair) -> None:
    assert await call(pair.egress, "/shop.shipping.v1.ShippingService/Ship") == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert (await pair.caller.stats())["http.egress.no_route"] == 1


async def test_caller_health_checks_pass_callee_mtls_and_rbac(pair: Pair) -> None:
    host = f"127.0.0.1:{pair.callee_inbound}"

    async def healthy() -> bool:
        hosts = await pair.caller.admin.host_health()
        return hosts.get("svc_payments", {}).get(host) == "healthy"

    await eventually(healthy, within=10, what="payments-0 to pass orders' health checks")
    stats = await pair.caller.stats()
    assert stats["cluster.svc_payments.health_check.success"] >= 1
    assert stats.get("cluster.svc_payments.health_check.failure", 0) == 0
