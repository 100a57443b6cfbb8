"""Isolation, private admin endpoints and JSON access logs in the real mesh.

The sockets each process holds are read from /proc (/proc/<pid>/fd matched against
/proc/<pid>/net/{tcp,tcp6,unix}): an app holds no TCP socket at all and listens only on its
Unix socket; Envoys listen on TCP only on loopback, and only for what must be reachable (mTLS
inbound, health, Prometheus metrics); their admin endpoints are Unix sockets in a private
directory, and no TCP listener answers an admin path. The egress listener routes by gRPC
service name, and only to the services the pod's app calls.

Switch-off checks (by hand, not part of the suite; the `mesh` fixture overridden to start
the mesh with the renderer patched): admin rendered on a TCP address fails the listener and
admin tests; a catch-all egress route (prefix "/" to one upstream) fails the egress test
(calls to unknown services leave the pod and meet the callee's RBAC instead of
UNIMPLEMENTED). The /proc reader itself is proven by the Envoy test, which finds exactly the
expected TCP listeners.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from shop.orders.v1 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc
from shopmesh.envoy.render import render_all
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.process import ManagedProcess
from tests.support.callers import as_user
from tests.support.calls import (
    answered,
    call_raw,
    get_payment,
    get_product,
    get_user,
    release_nothing,
    timed,
)
from tests.support.clients import MeshClients, channel, egress
from tests.support.observe import access_log, stats_of
from tests.support.polling import CALL_TIMEOUT, eventually
from tests.support.sockets import process_sockets

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOOPBACK = "127.0.0.1"
USERS = "/shop.users.v1.UsersService"
UNKNOWN_SERVICE = "/shop.shipping.v1.ShippingService/Ship"
SHOPPER = as_user("usr_0123456789abcdef0123456789abcdef")
"""The caller orders names when it calls on a shopper's behalf."""


def pid(process: ManagedProcess | None) -> int:
    """The pid of a running mesh process."""
    assert process is not None
    assert process.alive(), process.name
    assert process.pid is not None
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
            (LOOPBACK, ports.metrics),
        }
        # Its egress listener, the app's only way out, and its admin are Unix sockets.
        assert set(sockets.unix_listening) == {str(pod.egress_socket), str(pod.admin.socket)}
    gateway = process_sockets(pid(mesh.gateway.process))
    gateway_ports = mesh.gateway.ports
    assert {(sock.address, sock.port) for sock in gateway.tcp_listening} == {
        (LOOPBACK, gateway_ports.listener),
        (LOOPBACK, gateway_ports.health),
        (LOOPBACK, gateway_ports.metrics),
    }
    assert gateway.unix_listening == (str(mesh.gateway.admin.socket),)


async def test_admin_interfaces_are_unix_sockets_in_a_private_directory(
    mesh: RunningMesh,
) -> None:
    rendered = {
        path.name: yaml.safe_load(path.read_text())
        for path in sorted(mesh.paths.envoy.glob("*.yaml"))
        if path.name != "mesh.yaml"
    }
    assert len(rendered) == len(mesh.pods) + 1
    for name, config in rendered.items():
        admin = config["admin"]["address"]["pipe"]
        assert Path(admin["path"]).parent == mesh.paths.admin, name
        assert admin["mode"] == 0o600, name
    assert stat.S_IMODE(mesh.paths.admin.stat().st_mode) == 0o700
    kubernetes = render_all(mesh.topology, KubernetesLayout(mesh.topology))
    for name, config in kubernetes.items():
        assert "socket_address" not in config["admin"]["address"], name


ADMIN_PATHS = ("/ready", "/stats", "/runtime", "/clusters", "/config_dump", "/")


async def test_no_tcp_listener_answers_an_admin_path(mesh: RunningMesh) -> None:
    """The metrics listener routes /stats/prometheus alone; health routes the health check
    alone; neither lets a local process reach admin (runtime_modify, config_dump...)."""
    ports = [pod.ports for pod in mesh.pods.values()]
    urls = [f"http://{LOOPBACK}:{p.metrics}" for p in ports]
    urls += [f"http://{LOOPBACK}:{p.health}" for p in ports]
    urls += [f"http://{LOOPBACK}:{mesh.gateway.ports.metrics}"]
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT, trust_env=False) as client:
        for url in urls:
            for path in ADMIN_PATHS:
                assert (await client.get(url + path)).status_code == 404, url + path
            assert (await client.post(url + "/runtime_modify?x=1")).status_code == 404, url
        for url in [p.removesuffix("/stats/prometheus") for p in _metrics_urls(mesh)]:
            scraped = await client.get(url + "/stats/prometheus")
            assert scraped.status_code == 200, url
            assert "# TYPE envoy_" in scraped.text, url


def _metrics_urls(mesh: RunningMesh) -> list[str]:
    return [pod.metrics_url for pod in mesh.pods.values()] + [mesh.gateway.metrics_url]


async def test_egress_routes_by_grpc_service_name(mesh: RunningMesh) -> None:
    orders = await stats_of(mesh, "orders-0")
    inventory = await stats_of(mesh, "inventory-0")
    async with channel(egress(mesh, "orders-0")) as target:
        # Upstreams of orders reach their apps: users answers for itself, with its own reason
        # (as orders calls it, for a shopper).
        missing_user = await timed(get_user(target, "u_missing", metadata=SHOPPER))
        released = await timed(release_nothing(target))
        # Methods of upstreams that orders is not granted: routed, then refused by the callee's
        # RBAC (GetProduct too: checkout prices from the reservation, orders reads no product).
        product = await timed(get_product(target))
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
        unknown = await call_raw(target, UNKNOWN_SERVICE)
    async with channel(egress(mesh, "inventory-0")) as target:
        # inventory calls nothing: its egress routes nowhere.
        from_inventory = await timed(get_user(target, "u_missing"))

    assert (missing_user.code, missing_user.detail) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    assert answered(released), released
    assert product.code is grpc.StatusCode.PERMISSION_DENIED
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
    shopper = await mesh_clients.create_user()
    async with channel(mesh.gateway_address) as target:
        for _ in range(2 * len(mesh.replicas("inventory"))):
            await timed(get_product(target))
        await timed(get_payment(target, "pay_missing", metadata=shopper.metadata))
        await timed(get_user(target, "u_missing", metadata=shopper.metadata))
        await mesh_clients.notifications_of(shopper)
    await mesh_clients.place_order(shopper)

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
