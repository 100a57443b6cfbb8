"""CORS at the gateway: off by default (the storefront is same-origin: no answer carries CORS
headers), and with `gateway.cors.allowed_origins` set, a listed origin's preflight is allowed,
with grpc-status, grpc-message and grpc-status-details-bin exposed to its page, while any
other origin's is refused."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import yaml

from shop.inventory.v1 import inventory_pb2
from shopmesh.local.mesh import RunningMesh
from tests.support import grpcweb
from tests.support.cors import preflight
from tests.support.mesh import running_mesh, short_temp_dir
from tests.support.paths import MESH_FILE

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALLOWED = "https://shop.example.com"
LIST_PRODUCTS = "/shop.inventory.v1.InventoryService/ListProducts"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cors_mesh() -> AsyncIterator[RunningMesh]:
    """The mesh with one other origin allowed, without a dashboard."""
    directory = short_temp_dir("smcors-")
    topology = yaml.safe_load(MESH_FILE.read_text())
    topology["gateway"]["cors"]["allowed_origins"] = [ALLOWED]
    path = directory / "mesh.yaml"
    path.write_text(yaml.safe_dump(topology))
    try:
        async with running_mesh(topology=path, dashboard=False) as running:
            yield running
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_an_allowed_origins_preflight_is_allowed_and_sees_the_grpc_status(
    cors_mesh: RunningMesh,
) -> None:
    status, headers = await asyncio.to_thread(preflight, cors_mesh, ALLOWED)

    assert status == 200, headers
    assert headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"]


async def test_another_origins_preflight_is_refused(cors_mesh: RunningMesh) -> None:
    status, headers = await asyncio.to_thread(preflight, cors_mesh, "https://evil.example.net")

    # Answered by the gateway itself (never forwarded), without the origin's leave to call,
    # which is what the browser checks.
    assert status == 200, headers
    assert "access-control-allow-origin" not in headers


async def test_an_allowed_origins_call_exposes_the_grpc_trailers(cors_mesh: RunningMesh) -> None:
    reply = await asyncio.to_thread(
        grpcweb.call,
        cors_mesh.gateway_address,
        LIST_PRODUCTS,
        inventory_pb2.ListProductsRequest(page_size=1),
        {"origin": ALLOWED},
    )
    assert reply.status == 0
    assert reply.headers["access-control-allow-origin"] == ALLOWED
    exposed = set(reply.headers["access-control-expose-headers"].split(","))
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
