"""Fixtures of the tests that run real Envoy processes: single Envoys a test renders itself
(`envoys`), and the whole mesh (`mesh`, shared by one module's tests, always stopped) with
clients through its gateway (`mesh_clients`) and a shopper signed in to it (`shopper`). The
machinery is in tests/support."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shopmesh.local.mesh import RunningMesh
from tests.support.clients import MeshClients, Shopper, gateway_clients
from tests.support.envoy import EnvoyProcess, StartEnvoy, start_envoy, stop_envoy
from tests.support.mesh import running_mesh


@pytest.fixture
async def envoys(socket_dir: Path) -> AsyncIterator[StartEnvoy]:
    """Start Envoys with `await envoys(config)`; every one is stopped at teardown."""
    started: list[EnvoyProcess] = []

    async def start(config: Path) -> EnvoyProcess:
        envoy = await start_envoy(config, socket_dir)
        started.append(envoy)
        return envoy

    try:
        yield start
    finally:
        for envoy in started:
            await stop_envoy(envoy)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """The whole mesh (every app with its sidecar, and the gateway), shared by one module's
    tests, which run in the module's event loop (`pytestmark = pytest.mark.asyncio(
    loop_scope="module")`). A test that changes it (faults, stopped apps) restores it in a
    `finally`."""
    async with running_mesh() as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shopper(mesh: RunningMesh) -> Shopper:
    """One account signed in to the module's mesh, for the tests whose calls need a signed-in
    caller but not a fresh one (signing up and in costs two Argon2id hashes). Its access token
    outlives any module's tests (ACCESS_TOKEN_LIFETIME, 15 minutes)."""
    async with gateway_clients(mesh) as clients:
        return await clients.create_user()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced_mesh() -> AsyncIterator[RunningMesh]:
    """The whole mesh tracing every call from outside, its apps logging every call they serve
    (SHOPMESH_LOG_LEVEL=DEBUG), shared by one module's tests."""
    async with running_mesh(sampling=1.0, log_level="DEBUG") as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge_tls_mesh() -> AsyncIterator[RunningMesh]:
    """The whole mesh with its gateway serving TLS (`up --edge-tls`), without a dashboard,
    shared by one module's tests."""
    async with running_mesh(edge_tls=True, dashboard=False) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def traced_shopper(traced_mesh: RunningMesh) -> Shopper:
    """One account signed in to the module's traced mesh (as `shopper` is to `mesh`)."""
    async with gateway_clients(traced_mesh) as clients:
        return await clients.create_user()


@pytest_asyncio.fixture(loop_scope="module")
async def mesh_clients(mesh: RunningMesh) -> AsyncIterator[MeshClients]:
    """Clients of the module's mesh through its gateway, for one test."""
    async with gateway_clients(mesh) as clients:
        yield clients


@pytest_asyncio.fixture(loop_scope="module")
async def traced_clients(traced_mesh: RunningMesh) -> AsyncIterator[MeshClients]:
    """Clients of the module's traced mesh through its gateway, for one test."""
    async with gateway_clients(traced_mesh) as clients:
        yield clients
