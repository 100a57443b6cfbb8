"""Isolation, loopback-only admin and JSON access logs (issue 3, sidecar points 3 and 10) in
the real mesh.

The sockets each process holds are read from /proc (/proc/<pid>/fd matched against
/proc/<pid>/net/{tcp,tcp6,unix}): an app holds no TCP socket at all and listens only on its
Unix socket; Envoys listen on TCP only on loopback. The egress listener routes by gRPC service
name, and only to the services the pod's app calls.

Switch-off checks (by hand, not part of the suite; the `mesh` fixture overridden to start
the mesh with the renderer patched): admin rendered on 0.0.0.0 fails the listener and admin
tests; a catch-all egress route (prefix "/" to one upstream) fails the egress test (calls to
unknown services leave the pod and meet the callee's RBAC instead of UNIMPLEMENTED). The
/proc reader itself is proven by the Envoy test, which finds exactly the expected TCP
listeners.
"""

from __future__ import annotations

from typing import Any

import grpc
import yaml

from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.render import KubernetesAddressing, render_all
from shopmesh.supervisor import ManagedProcess, RunningMesh
from tests.mesh.conftest import MeshClients, eventually
from tests.mesh.resilience_tools import (
    access_log,
    call_path,
    channel,
    egress,
    get_payment,
    get_product,
    get_user,
    process_sockets,
    stats_of,
    timed,
)

LOOPBACK = "127.0.0.1"
USERS = "/shop.users.v1.UsersService"
UNKNOWN_SERVICE = "/shop.shipping.v1.ShippingService/Ship"


def pid(process: ManagedProcess | None) -> int:
    """The pid of a running mesh process."""
    assert process is not None
    assert process.alive(), process.name
    return process.pid


async def test_apps_hold_no_tcp_socket_and_listen_only_on_their_unix_socket(
    mesh: RunningMesh,
) -> None:
    # The orders app has connected to its egress by now (start-up waits for it to serve).
    for pod in mesh.pods.values():
        sockets = process_sockets(pid(pod.app))
        assert sockets.tcp == (), f"{pod.app_name} holds TCP sockets: {sockets.tcp}"
        assert sockets.unix_listening == (str(pod.app_socket),), pod.app_name


async def test_envoys_listen_on_tcp_only_on_loopback(mesh: RunningMesh) -> None:
    for pod in mesh.pods.values():
        sockets = process_sockets(pid(pod.sidecar))
        listening = {(sock.address, sock.port) for sock in sockets.tcp_listening}
        ports = pod.ports
        assert listening == {
            (LOOPBACK, ports.inbound),
            (LOOPBACK, ports.health),
            (LOOPBACK, ports.admin),
        }
        # Its egress listener, the app's only way out, is a Unix socket.
        assert sockets.unix_listening == (str(pod.egress_socket),), pod.sidecar_name
    gateway = process_sockets(pid(mesh.gateway.process))
    gateway_ports = mesh.gateway.ports
    assert {(sock.address, sock.port) for sock in gateway.tcp_listening} == {
        (LOOPBACK, gateway_ports.listener),
        (LOOPBACK, gateway_ports.health),
        (LOOPBACK, gateway_ports.admin),
    }
    assert gateway.unix_listening == ()


async def test_admin_interfaces_are_rendered_on_loopback_only(mesh: RunningMesh) -> None:
    rendered = {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted(mesh.state.envoy.glob("*.yaml"))
    }
    assert len(rendered) == len(mesh.pods) + 1
    kubernetes = render_all(mesh.topology, KubernetesAddressing.standard(mesh.topology))
    for name, config in [*rendered.items(), *kubernetes.items()]:
        admin = config["admin"]["address"]["socket_address"]
        assert admin["address"] == LOOPBACK, name


async def test_egress_routes_by_grpc_service_name(mesh: RunningMesh) -> None:
    orders = await stats_of(mesh, "orders-0")
    inventory = await stats_of(mesh, "inventory-0")
    async with channel(egress(mesh, "orders-0")) as target:
        # Upstreams of orders reach their apps: users answers for itself, with its own reason.
        missing_user = await timed(get_user(target, "u_missing"))
        product = await timed(get_product(target))
        # A method of an upstream that orders is not granted: routed, then refused by users.
        create_user = await timed(
            users_pb2_grpc.UsersServiceStub(target).CreateUser(
                users_pb2.CreateUserRequest(email="egress@example.com"), timeout=10
            )
        )
        # Not an upstream of orders (its own service), and no service at all.
        own_service = await timed(
            orders_pb2_grpc.OrdersServiceStub(target).GetOrder(
                orders_pb2.GetOrderRequest(order_id="ord_missing"), timeout=10
            )
        )
        unknown = await call_path(target, UNKNOWN_SERVICE)
    async with channel(egress(mesh, "inventory-0")) as target:
        # inventory calls nothing: its egress routes nowhere.
        from_inventory = await timed(get_user(target, "u_missing"))

    assert (missing_user.code, missing_user.detail) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert product.code is grpc.StatusCode.OK
    assert create_user.code is grpc.StatusCode.PERMISSION_DENIED
    assert own_service.code is grpc.StatusCode.UNIMPLEMENTED
    assert unknown.code is grpc.StatusCode.UNIMPLEMENTED
    assert from_inventory.code is grpc.StatusCode.UNIMPLEMENTED
    assert await orders.delta("http.egress.no_route") == {"http.egress.no_route": 2}
    assert await inventory.delta("http.egress.no_route") == {"http.egress.no_route": 1}


async def test_every_sidecar_writes_json_access_logs_with_method_and_status(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    """One call to each service through the gateway (inventory until both replicas served
    one); every sidecar's log then has a JSON line naming the method and its gRPC status."""
    async with channel(mesh.gateway_address) as target:
        for _ in range(2 * len(mesh.replicas("inventory"))):
            await timed(get_product(target))
        await timed(get_payment(target, "pay_missing"))
        await timed(get_user(target, "u_missing"))
        user = (await mesh_clients.create_user()).user_id
        await mesh_clients.notifications_of(user)
    await mesh_clients.place_order(user)

    def inbound_entries(pod: str) -> list[dict[str, Any]]:
        return [
            entry
            for entry in access_log(mesh.pod(pod).access_log)
            if entry["listener"] == "inbound"
        ]

    async def every_sidecar_logged() -> bool:
        return all(inbound_entries(pod) for pod in mesh.pods)

    await eventually(every_sidecar_logged, within=5, what="an inbound entry in every access log")
    for pod in mesh.pods:
        for entry in inbound_entries(pod):
            assert entry["path"].startswith(f"/{mesh.pod(pod).grpc_service}/"), entry
            assert isinstance(entry["grpc_status"], int), entry
            assert entry["peer"].startswith(mesh.topology.spiffe_prefix), entry
    # users refused the missing user, as the gateway logged it too.
    assert any(
        entry["path"] == f"{USERS}/GetUser"
        and entry["grpc_status"] == grpc.StatusCode.NOT_FOUND.value[0]
        for entry in inbound_entries("users-0")
    )
    assert any(
        entry["path"] == f"{USERS}/GetUser"
        and entry["grpc_status"] == grpc.StatusCode.NOT_FOUND.value[0]
        for entry in access_log(mesh.gateway.access_log)
    )
