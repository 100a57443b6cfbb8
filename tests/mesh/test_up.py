"""The whole mesh, as `shopmesh up` starts it: every pod healthy, a checkout through the
gateway confirmed and notified, and the handle's controls (faults, app restarts, certificate
rotation) working on the running processes."""

from __future__ import annotations

import signal

import grpc
import pytest
from grpc import aio

from shop.inventory.v1 import inventory_pb2
from shop.notifications.v1 import notifications_pb2
from shop.orders.v1 import orders_pb2
from shop.payments.v1 import payments_pb2
from shopmesh.envoy.faults import ABORT_GRPC_STATUS, ABORT_PERCENT, Fault, FaultError
from shopmesh.local import certs, faults
from shopmesh.local.dashboard import DASHBOARD
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import COLLECTOR, LOGS, RunningMesh
from shopmesh.local.reflection import REFLECTION
from shopmesh.local.status import mesh_status
from shopmesh.topology import GATEWAY
from tests.support.clients import MeshClients, Shopper
from tests.support.mesh import running_mesh
from tests.support.observe import upstream_health
from tests.support.paths import TOPOLOGY
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_every_process_is_up_and_healthy(mesh: RunningMesh) -> None:
    rows = await mesh_status(mesh)

    expected = {f"{pod}.{kind}" for pod in mesh.pods for kind in ("app", "sidecar")}
    assert {row.name for row in rows} == expected | {
        GATEWAY,
        REFLECTION,
        COLLECTOR,
        LOGS,
        DASHBOARD,
    }
    unhealthy = [row for row in rows if not (row.alive and row.healthy)]
    assert unhealthy == []
    assert {row.health for row in rows if row.kind == "app"} == {"SERVING"}
    assert {row.health for row in rows if row.kind in ("sidecar", GATEWAY)} == {"LIVE"}


async def test_one_pod_per_replica_of_the_topology(mesh: RunningMesh) -> None:
    replicas = {name: len(mesh.replicas(name)) for name in TOPOLOGY.services}

    assert replicas == {name: s.replicas for name, s in TOPOLOGY.services.items()}
    inventory = mesh.replicas("inventory")
    # The replicas are one service: they share its database (SQLite WAL, BEGIN IMMEDIATE).
    assert len({pod.db_path for pod in inventory}) == 1
    assert len({pod.ports.inbound for pod in mesh.pods.values()}) == len(mesh.pods)


async def test_gateway_sees_every_replica_healthy(mesh: RunningMesh) -> None:
    for service in TOPOLOGY.gateway.exposes:
        hosts = await upstream_health(mesh, GATEWAY, service)
        assert sorted(hosts) == sorted(pod.inbound for pod in mesh.replicas(service))
        assert set(hosts.values()) == {"healthy"}


async def test_checkout_through_the_gateway_is_confirmed_and_notified(
    mesh_clients: MeshClients,
) -> None:
    shopper, order = await mesh_clients.checkout(items=[("STICKER-01", 2)])

    assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert order.total.minor_units == 2 * 299
    notification = await mesh_clients.wait_for_notification(shopper, order.order_id)
    assert notification.event_type == notifications_pb2.ORDER_EVENT_TYPE_CONFIRMED


async def test_a_call_crosses_the_gateway_and_both_sidecars(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    orders = mesh.replicas("orders")[0]
    payments = mesh.replicas("payments")[0]
    before = await mesh.admin(payments.name).stats()

    await mesh_clients.checkout()

    after = await mesh.admin(payments.name).stats()
    assert after["http.inbound.rbac.allowed"] > before["http.inbound.rbac.allowed"]
    caller = await mesh.admin(orders.name).stats()
    assert caller["cluster.svc_payments.upstream_rq_completed"] >= 1
    gateway = await mesh.admin(GATEWAY).stats()
    assert gateway["cluster.svc_orders.upstream_rq_completed"] >= 1


async def test_fault_is_set_on_every_replica_and_cleared(mesh: RunningMesh) -> None:
    try:
        await faults.inject(
            mesh, "inventory", Fault.of(abort_percent=30, grpc_status="UNAVAILABLE")
        )
        active = await faults.active(mesh, "inventory")

        assert set(active) == {pod.name for pod in mesh.replicas("inventory")}
        for keys in active.values():
            assert keys == {
                ABORT_PERCENT: "30",
                ABORT_GRPC_STATUS: str(grpc.StatusCode.UNAVAILABLE.value[0]),
            }
    finally:
        await faults.clear(mesh, "inventory")

    assert all(keys == {} for keys in (await faults.active(mesh, "inventory")).values())


async def test_injected_abort_fails_calls_until_cleared(
    mesh: RunningMesh, mesh_clients: MeshClients, shopper: Shopper
) -> None:
    # payments has one replica, which outlier detection never ejects: once the fault is
    # cleared the very next call succeeds.
    request = payments_pb2.GetPaymentRequest(payment_id="pay_missing")
    try:
        await faults.inject(
            mesh, "payments", Fault.of(abort_percent=100, grpc_status="RESOURCE_EXHAUSTED")
        )
        with pytest.raises(aio.AioRpcError) as failure:
            await mesh_clients.payments.GetPayment(request, timeout=10, metadata=shopper.metadata)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await faults.clear(mesh, "payments")

    with pytest.raises(aio.AioRpcError) as answered:
        await mesh_clients.payments.GetPayment(request, timeout=10, metadata=shopper.metadata)
    assert answered.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fault_refuses_an_incomplete_setting(mesh: RunningMesh) -> None:
    with pytest.raises(FaultError, match="abort_percent"):
        Fault.of()
    with pytest.raises(MeshError, match="no service 'shipping'"):
        await faults.inject(mesh, "shipping", Fault.of(abort_percent=1))


async def test_an_app_stops_gracefully_and_starts_again(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    pod = mesh.replicas("inventory")[1]
    try:
        assert await mesh.stop_app(pod.name) == 0
        assert not pod.app_socket.exists()
        assert (await mesh.app_health(pod.name)).startswith("unreachable")
        # The other replica serves on.
        await mesh_clients.inventory.GetProduct(
            inventory_pb2.GetProductRequest(sku="MUG-01"), timeout=10
        )
    finally:
        await mesh.start_app(pod.name)

    assert await mesh.app_health(pod.name) == "SERVING"

    async def back_in_rotation() -> bool:
        hosts = await upstream_health(mesh, GATEWAY, "inventory")
        return hosts[pod.inbound] == "healthy"

    await eventually(back_in_rotation, within=15, what=f"the gateway to see {pod.name} healthy")
    await mesh.wait_healthy()


async def test_signal_reaches_only_the_app(mesh: RunningMesh) -> None:
    pod = mesh.replicas("users")[0]
    try:
        mesh.signal_app(pod.name, signal.SIGTERM)
        assert await mesh.wait_app_exit(pod.name) == 0
        assert pod.sidecar is not None
        assert pod.sidecar.alive()
    finally:
        await mesh.start_app(pod.name)

    async def back_in_rotation() -> bool:
        hosts = await upstream_health(mesh, GATEWAY, "users")
        return set(hosts.values()) == {"healthy"}

    await eventually(back_in_rotation, within=15, what="the gateway to see users healthy")
    await mesh.wait_healthy()


async def test_rotated_certificates_are_served_without_restart(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    pids = [process.pid for process in mesh.processes()]

    serials = await certs.rotate(mesh)

    assert set(serials) == set(TOPOLOGY.identities)
    for pod in mesh.pods.values():
        assert serials[pod.service] in await mesh.admin(pod.name).served_serials()
    assert serials[GATEWAY] in await mesh.admin(GATEWAY).served_serials()
    assert [process.pid for process in mesh.processes()] == pids
    _, order = await mesh_clients.checkout()
    assert order.status == orders_pb2.ORDER_STATUS_CONFIRMED


async def test_an_app_that_fails_at_start_is_named_with_its_log() -> None:
    # A malformed setting makes orders exit with status 2 and a message naming the variable.
    broken = {"SHOPMESH_ORDERS_RECOVERY_INTERVAL": "soon"}

    with pytest.raises(MeshError) as failure:
        async with running_mesh(app_env=broken):
            pytest.fail("the mesh started with a broken orders configuration")

    message = str(failure.value)
    assert "orders-0.app exited with status 2" in message
    assert "SHOPMESH_ORDERS_RECOVERY_INTERVAL" in message
