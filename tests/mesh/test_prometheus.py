"""A real Prometheus (Debian's `prometheus`) scrapes the real mesh with the configuration
`shopmesh up` wrote, every Envoy through its loopback metrics listener, and answers a PromQL
query for each service's request rate from grpc_stats' counters. Prometheus runs on a free
port with its own storage and is always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from shopmesh.local.mesh import RunningMesh
from shopmesh.local.ports import free_ports
from shopmesh.local.prometheus import scrape_config
from shopmesh.topology import GATEWAY
from tests.support.calls import checkout, running_load
from tests.support.clients import MeshClients
from tests.support.mesh import running_mesh
from tests.support.polling import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCRAPE_INTERVAL = timedelta(seconds=1)
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
MAX_CHECKOUTS = 500
"""Checkouts run until Prometheus has a rate for every service; never more than this."""
REQUEST_RATE = (
    "sum by (service) (rate(envoy_cluster_grpc_total"
    '{role="sidecar", envoy_cluster_name="local_app", envoy_grpc_bridge_method!=""}[5s]))'
)
"""Calls per second each service served (inbound, per-method grpc_stats: no health checks)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """The module's mesh, without the dashboard: Prometheus is what watches it here."""
    async with running_mesh(dashboard=False) as running:
        yield running


def prometheus_binary() -> Path:
    found = shutil.which("prometheus") or shutil.which("/usr/bin/prometheus")
    if found is None:
        pytest.fail("prometheus is not installed: run `make system-deps`", pytrace=False)
    return Path(found)


@contextlib.asynccontextmanager
async def running_prometheus(config: Path, workdir: Path) -> AsyncIterator[str]:
    """Prometheus on `config`, on a free loopback port; its base URL once it is ready."""
    (port,) = free_ports("127.0.0.1", 1)
    log = workdir / "prometheus.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            str(prometheus_binary()),
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=output,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:

            async def ready() -> bool:
                if process.returncode is not None:
                    raise AssertionError(f"prometheus exited:\n{log.read_text()[-2000:]}")
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/-/ready")).status_code == 200
                return False

            await eventually(ready, STARTUP_SECONDS, "prometheus to be ready")
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()


async def query(url: str, promql: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        response = await client.get("/api/v1/query", params={"query": promql})
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


async def test_prometheus_gets_a_request_rate_per_service_from_the_written_config(
    mesh: RunningMesh, mesh_clients: MeshClients, tmp_path: Path
) -> None:
    written = yaml.safe_load(mesh.paths.prometheus_config.read_text())
    assert written == scrape_config(mesh.layout)
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(mesh.layout, SCRAPE_INTERVAL)))
    shopper = await mesh_clients.create_user()
    rates: dict[str, float] = {}

    async with running_prometheus(config, tmp_path) as url:

        async def every_target_up() -> bool:
            async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
                targets = (await client.get("/api/v1/targets")).json()["data"]["activeTargets"]
            return len(targets) == len(mesh.pods) + 1 and all(t["health"] == "up" for t in targets)

        await eventually(every_target_up, STARTUP_SECONDS, "every Envoy to be scraped")
        async with running_load(
            lambda: checkout(mesh_clients, shopper), in_flight=1, limit=MAX_CHECKOUTS
        ):

            async def every_service_rated() -> bool:
                for series in await query(url, REQUEST_RATE):
                    rates[series["metric"]["service"]] = float(series["value"][1])
                return all(rates.get(service, 0) > 0 for service in mesh.services)

            await eventually(every_service_rated, 60.0, f"a request rate of every service: {rates}")
        up = await query(url, "up")

    assert set(rates) == set(mesh.services)
    labels = {(s["metric"]["service"], s["metric"]["pod"], s["metric"]["role"]) for s in up}
    assert labels == {(pod.service, name, "sidecar") for name, pod in mesh.pods.items()} | {
        (GATEWAY, GATEWAY, GATEWAY)
    }
