"""TLS at the edge (`shopmesh up --edge-tls`): the gateway's public listener serves a
certificate of the mesh's CA, and users reach it as the connection help tells them (grpcurl
-cacert, curl --cacert with https), over HTTP/2 or HTTP/1.1 as ALPN picks; a plaintext client
and one that does not trust the CA get nothing; `certs rotate` changes the certificate served
without a restart; and every in-repo client (load, the tests' stubs) follows the mesh's choice.

One real mesh with edge TLS is started for this module."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import grpc
import pytest
from cryptography import x509
from grpc import aio

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shopmesh.local import certs
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.load import LoadRun, LoadSettings
from shopmesh.pki import EDGE_DIRECTORY
from tests.support.clients import gateway_clients
from tests.support.grpcurl import Grpcurl
from tests.support.http import curl_json, grpc_path, post_json
from tests.support.polling import CALL_TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

INVENTORY = "shop.inventory.v1.InventoryService"
LIST_PRODUCTS = f"{INVENTORY}/ListProducts"


def handshake(mesh: RunningMesh, alpn: list[str]) -> tuple[str | None, int]:
    """A TLS handshake with the gateway trusting only the mesh's CA, checking the name
    `localhost`: the protocol ALPN chose and the serial of the certificate served."""
    target = mesh.gateway_target
    assert target.ca is not None
    context = ssl.create_default_context(cafile=str(target.ca))
    context.set_alpn_protocols(alpn)
    host, port = target.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return tls.selected_alpn_protocol(), x509.load_der_x509_certificate(der).serial_number


async def test_grpcurl_with_the_mesh_ca_calls_a_public_method(edge_tls_mesh: RunningMesh) -> None:
    grpcurl = Grpcurl.to(edge_tls_mesh.gateway_target)
    assert "-cacert" in grpcurl.transport

    listed = await grpcurl.call("inventory", LIST_PRODUCTS, {"page_size": 2})

    assert len(listed["products"]) == 2


async def test_curl_with_the_mesh_ca_posts_json_over_https(edge_tls_mesh: RunningMesh) -> None:
    target = edge_tls_mesh.gateway_target

    response = await curl_json(
        target.address,
        grpc_path(INVENTORY, "ListProducts"),
        json.dumps({"page_size": 1}),
        https=True,
        cacert=target.ca,
    )

    assert response.status == 200
    assert len(response.json()["products"]) == 1


async def test_alpn_picks_http2_for_grpc_and_http1_for_json(edge_tls_mesh: RunningMesh) -> None:
    grpc_client, _ = await asyncio.to_thread(handshake, edge_tls_mesh, ["h2", "http/1.1"])
    json_client, _ = await asyncio.to_thread(handshake, edge_tls_mesh, ["http/1.1"])

    assert (grpc_client, json_client) == ("h2", "http/1.1")


async def test_a_plaintext_client_is_refused(edge_tls_mesh: RunningMesh) -> None:
    address = edge_tls_mesh.gateway_address
    async with aio.insecure_channel(address) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.ListProducts(inventory_pb2.ListProductsRequest(page_size=1), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    with pytest.raises(ConnectionError):
        await post_json(address, grpc_path(INVENTORY, "ListProducts"), {"page_size": 1})


async def test_a_client_that_does_not_trust_the_mesh_ca_fails_verification(
    edge_tls_mesh: RunningMesh,
) -> None:
    # TLS trusting the system's CAs only, as grpcurl does without -cacert.
    untrusting = Grpcurl(edge_tls_mesh.gateway_address, transport=())

    result = await untrusting.run("inventory", LIST_PRODUCTS, data={"page_size": 1}, max_time=5)

    assert result.returncode != 0, result.explain()
    assert "certificate signed by unknown authority" in result.stderr, result.explain()


async def test_the_clients_of_the_repository_follow_the_mesh_into_tls(
    edge_tls_mesh: RunningMesh,
) -> None:
    # Another process finds the choice in mesh.json: status, restart, load, the dashboard.
    attached = RunningMesh.attach(edge_tls_mesh.state_dir)
    assert attached is not None
    assert attached.gateway_target == edge_tls_mesh.gateway_target
    assert attached.gateway_target.url.startswith("https://")

    async with gateway_clients(attached) as clients:
        listed = await clients.inventory.ListProducts(
            inventory_pb2.ListProductsRequest(page_size=1), timeout=CALL_TIMEOUT
        )
    assert len(listed.products) == 1

    run = LoadRun(attached.gateway_target, LoadSettings(rate=20, duration=1.0, seed=13))
    summary = await run.run()
    assert summary.ok > 0
    assert "UNAVAILABLE" not in {code for rpc in summary.rpcs for code in rpc.codes}


async def test_a_rotated_edge_certificate_is_served_without_a_restart(
    edge_tls_mesh: RunningMesh,
) -> None:
    _, before = await asyncio.to_thread(handshake, edge_tls_mesh, ["h2"])
    gateway_pid = edge_tls_mesh.gateway.pid

    serials = await certs.rotate(edge_tls_mesh)

    _, after = await asyncio.to_thread(handshake, edge_tls_mesh, ["h2"])
    assert after == serials[EDGE_DIRECTORY] != before
    assert edge_tls_mesh.gateway.pid == gateway_pid
