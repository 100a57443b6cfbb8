"""A notifications watch may stay quiet for hours: its routes have no idle timeout, where
Envoy's default (5 minutes of silence, per stream) would cut it. HTTP/2 keepalive on every
network hop finds a peer that vanished instead.

The real-Envoy test compresses time: a second gateway, rendered like the mesh's own but with
a stream idle timeout of a fraction of a second, keeps a quiet watch open past it (and, as a
control, cuts one whose route does not override the idle timeout)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc import aio

from shop.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from shopmesh.envoy.builders import HTTP2_KEEPALIVE, Json
from shopmesh.envoy.render import render_all
from shopmesh.envoy.upstream import STREAM_IDLE_TIMEOUT
from shopmesh.local.mesh import RunningMesh
from tests.support.clients import MeshClients
from tests.support.envoy import local_layout, start_envoy, stop_envoy
from tests.support.paths import TOPOLOGY

WATCH = "/shop.notifications.v1.NotificationsService/WatchNotifications"
PLACE_ORDER = "/shop.orders.v1.OrdersService/PlaceOrder"
IDLE_TIMEOUT = 0.3
"""The compressed stand-in for Envoy's default stream idle timeout (5 minutes)."""


def routes_of(config: Json, listener: str) -> list[Json]:
    (chain,) = next(
        item for item in config["static_resources"]["listeners"] if item["name"] == listener
    )["filter_chains"]
    manager = chain["filters"][0]["typed_config"]
    return [route for host in manager["route_config"]["virtual_hosts"] for route in host["routes"]]


def manager_of(config: Json, listener: str) -> Json:
    (chain,) = next(
        item for item in config["static_resources"]["listeners"] if item["name"] == listener
    )["filter_chains"]
    manager: Json = chain["filters"][0]["typed_config"]
    return manager


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Json]:
    """File name (`gateway.yaml`) -> config."""
    layout = local_layout(TOPOLOGY, tmp_path_factory.mktemp("streams"))
    return {f"{name}.yaml": config for name, config in render_all(TOPOLOGY, layout).items()}


def test_watch_routes_have_no_idle_timeout(rendered: dict[str, Json]) -> None:
    gateway = [
        r for r in routes_of(rendered["gateway.yaml"], "ingress") if r["match"]["path"] == WATCH
    ]
    inbound = [
        r
        for r in routes_of(rendered["notifications-0.yaml"], "inbound")
        if r["match"] == {"path": WATCH}
    ]

    # The notifications virtual host and the default one each route the watch.
    assert len(gateway) == 2
    assert len(inbound) == 1
    for route in gateway + inbound:
        assert route["route"]["idle_timeout"] == STREAM_IDLE_TIMEOUT == "0s"
        assert route["route"]["timeout"] in ("0s", "0.000s")


def test_unary_routes_keep_the_default_idle_timeout(rendered: dict[str, Json]) -> None:
    unary = [
        route
        for name, config in rendered.items()
        for listener in (("ingress",) if name == "gateway.yaml" else ("inbound", "egress"))
        for route in routes_of(config, listener)
        if route.get("match", {}).get("path") != WATCH
        and "route" in route
        and route["route"].get("timeout") != "0s"
    ]

    assert any(route["match"].get("path") == PLACE_ORDER for route in unary)
    assert [route for route in unary if "idle_timeout" in route["route"]] == []


def test_hops_between_envoys_and_from_clients_send_keepalives(rendered: dict[str, Json]) -> None:
    gateway = rendered["gateway.yaml"]
    assert manager_of(gateway, "ingress")["http2_protocol_options"]["connection_keepalive"] == (
        HTTP2_KEEPALIVE
    )
    inbound = manager_of(rendered["payments-0.yaml"], "inbound")["http2_protocol_options"]
    assert inbound["connection_keepalive"] == HTTP2_KEEPALIVE
    for name, config in rendered.items():
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "admin":
                # Its own admin endpoint over a Unix socket: plain HTTP/1.1, no keepalive.
                assert "typed_extension_protocol_options" not in cluster
                continue
            options = cluster["typed_extension_protocol_options"]
            (protocol,) = options.values()
            http2 = protocol["explicit_http_config"]["http2_protocol_options"]
            # Unix sockets to a local process (an app, the reflection service): no keepalive.
            local = cluster["name"] in ("local_app", "reflection")
            expected = {} if local else {"connection_keepalive": HTTP2_KEEPALIVE}
            assert http2 == expected, (name, cluster["name"])


def compressed_gateway(mesh: RunningMesh, directory: Path, override_idle: bool) -> Path:
    """The mesh's gateway config on fresh ports, with a tiny stream idle timeout (and, when
    `override_idle` is False, the watch routes' override removed)."""
    config: dict[str, Any] = yaml.safe_load(mesh.gateway.config.read_text())
    config = copy.deepcopy(config)
    name = "gateway-idle" if override_idle else "gateway-no-override"
    admin = {"path": str(directory / f"{name}.admin.sock")}
    config["admin"]["address"]["pipe"] = {**admin, "mode": 0o600}
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "admin":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"] = {
                "address": {"pipe": admin}
            }
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
        for chain in listener["filter_chains"]:
            manager = chain["filters"][0]["typed_config"]
            manager["stream_idle_timeout"] = f"{IDLE_TIMEOUT}s"
            manager["access_log"] = []
    if not override_idle:
        for route in routes_of(config, "ingress"):
            route.get("route", {}).pop("idle_timeout", None)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def quiet_watch_then_order(
    mesh: RunningMesh, mesh_clients: MeshClients, directory: Path, override_idle: bool
) -> str:
    """Watch through a compressed gateway, stay quiet for 3 idle timeouts, then place an
    order: the order id the watch delivers, or the status code that ended the watch."""
    envoy = await start_envoy(compressed_gateway(mesh, directory, override_idle), directory)
    try:
        port = await envoy.listener_port("ingress")
        # A fresh shopper: the first notification it is told of is the order placed below.
        shopper = await mesh_clients.create_user()
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = notifications_pb2_grpc.NotificationsServiceStub(channel)
            call = stub.WatchNotifications(
                notifications_pb2.WatchNotificationsRequest(user_id=shopper.user_id),
                metadata=shopper.metadata,
            )
            # Headers come once the subscription exists (the contract says so).
            await asyncio.wait_for(call.initial_metadata(), timeout=10)
            # Not synchronization: the silence itself is what is under test.
            await asyncio.sleep(3 * IDLE_TIMEOUT)
            order = await mesh_clients.place_order(shopper)
            try:
                message = await asyncio.wait_for(call.read(), timeout=10)
            except aio.AioRpcError as error:
                return error.code().name
            finally:
                call.cancel()
            assert isinstance(message, notifications_pb2.WatchNotificationsResponse)
            assert message.notification.order_id == order.order_id
            return "delivered"
    finally:
        await stop_envoy(envoy)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_quiet_watch_outlives_the_stream_idle_timeout(
    mesh: RunningMesh, mesh_clients: MeshClients, socket_dir: Path
) -> None:
    assert await quiet_watch_then_order(mesh, mesh_clients, socket_dir, True) == "delivered"


@pytest.mark.asyncio(loop_scope="module")
async def test_without_the_override_a_quiet_watch_is_cut(
    mesh: RunningMesh, mesh_clients: MeshClients, socket_dir: Path
) -> None:
    outcome = await quiet_watch_then_order(mesh, mesh_clients, socket_dir, False)

    # Envoy resets a stream whose headers were sent when it idles out; gRPC reports a reset
    # stream as INTERNAL.
    assert outcome == grpc.StatusCode.INTERNAL.name
