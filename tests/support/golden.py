"""What the golden-metrics tests share: waiting until every Envoy has merged its latency
histograms, and the unit tests' fixture of real Envoy stats: two samples of a whole mesh (every
Envoy's JSON /stats, as `shopmesh.observe.stats.sample` asks for it) around known traffic, and
what the client saw of that traffic; `load_fixture` reads them back as Samples.

Capture the fixture again (a real mesh, a few seconds) after a change to what Envoy counts:

    flock /tmp/mesh-tests.lock .venv/bin/python -m tests.support.golden
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from shopmesh.envoy.faults import Fault, active_keys
from shopmesh.local import faults
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.envoystats import EnvoyStats, Histogram
from shopmesh.observe.stats import STATS_PATTERN, Sample
from shopmesh.topology import GATEWAY, Topology
from tests.support.calls import Outcome, call_raw, checkout, get_product, timed
from tests.support.clients import channel, egress, gateway_clients
from tests.support.mesh import running_mesh
from tests.support.paths import ROOT, TOPOLOGY
from tests.support.polling import CALL_TIMEOUT, eventually

ADMIN_COMPLETED = "cluster.admin.upstream_rq_completed"
ADMIN_LATENCY = "cluster.admin.upstream_rq_time"
FIXTURE = ROOT / "tests" / "unit" / "data" / "envoy-stats.json"
CHECKOUTS = 6
DECLINED = 2
FAULTY_CHECKOUTS = 10
PRODUCT_READS = 4
ABORT_PERCENT = 30
UNROUTED_PATH = "/shop.payments.v1.PaymentsService/Charge"
"""Not exposed at the gateway: it has no route for it."""
DENIED_PATH = "/shop.users.v1.UsersService/CreateUser"
"""Routed by orders' egress (to users) but not granted to orders: users' RBAC refuses it."""


@dataclass(frozen=True)
class Fixture:
    """Two samples and what the client saw in between: outcome name -> count, per call kind."""

    before: Sample
    after: Sample
    client: dict[str, dict[str, int]]


async def raw_sample(mesh: RunningMesh) -> dict[str, Any]:
    """Every Envoy's JSON /stats and every sidecar's fault keys, as they came."""
    started = time.monotonic()
    names = [*mesh.pods, GATEWAY]
    documents = await asyncio.gather(
        *(mesh.admin(name).stats_json(STATS_PATTERN, used_only=True) for name in names)
    )
    runtimes = await asyncio.gather(*(pod.admin.runtime() for pod in mesh.pods.values()))
    return {
        "at": (started + time.monotonic()) / 2,
        "wall": time.time(),
        "pods": {name: pod.service for name, pod in mesh.pods.items()},
        "envoys": dict(zip(names, documents, strict=True)),
        "faults": {
            name: active_keys(runtime) for name, runtime in zip(mesh.pods, runtimes, strict=True)
        },
    }


def as_sample(raw: dict[str, Any], topology: Topology) -> Sample:
    return Sample(
        at=raw["at"],
        wall=raw["wall"],
        topology=topology,
        pods=raw["pods"],
        envoys={name: EnvoyStats.parse(doc) for name, doc in raw["envoys"].items()},
        faults=raw["faults"],
    )


def load_fixture(path: Path = FIXTURE, topology: Topology = TOPOLOGY) -> Fixture:
    document = json.loads(path.read_text())
    return Fixture(
        as_sample(document["before"], topology),
        as_sample(document["after"], topology),
        document["client"],
    )


def counted(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(collections.Counter(outcome.code.name for outcome in outcomes))


CANARY = r"^cluster\.admin\.upstream_rq_(completed|time)$"
"""A scrape of an Envoy's metrics listener is one call through its `admin` cluster."""


async def histograms_merged(mesh: RunningMesh, within: float = 10.0) -> None:
    """Wait until every Envoy's latency histograms hold every call made so far. Envoy merges
    all of an Envoy's histograms at once, every second (counters are live), so once a scrape
    made now (one call of its `admin` cluster) shows in `cluster.admin.upstream_rq_time`,
    everything before it does too."""
    names = [*mesh.pods, GATEWAY]
    urls = [mesh.pod(pod).metrics_url for pod in mesh.pods] + [mesh.gateway.metrics_url]
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as client:
        for response in await asyncio.gather(*map(client.get, urls)):
            response.raise_for_status()

    async def read() -> list[EnvoyStats]:
        documents = await asyncio.gather(
            *(mesh.admin(name).stats_json(CANARY, used_only=True) for name in names)
        )
        return [EnvoyStats.parse(document) for document in documents]

    scraped = [stats.values[ADMIN_COMPLETED] for stats in await read()]

    async def caught_up() -> bool:
        merged = [stats.histograms.get(ADMIN_LATENCY, Histogram()).count for stats in await read()]
        return all(now >= then for now, then in zip(merged, scraped, strict=True))

    await eventually(caught_up, within, "every Envoy to merge its latency histograms")


async def capture(mesh: RunningMesh) -> dict[str, Any]:
    """The traffic of the fixture between two raw samples; the fault stays on in the second."""
    client: dict[str, list[Outcome]] = collections.defaultdict(list)
    async with gateway_clients(mesh) as clients:
        shopper = await clients.create_user()
        before = await raw_sample(mesh)
        for token, count in (("tok_visa", CHECKOUTS), ("tok_chargeDeclined", DECLINED)):
            for _ in range(count):
                order = clients.place_order(shopper, payment_token=token)
                client[f"PlaceOrder {token}"].append(await timed(order))
        for _ in range(PRODUCT_READS):
            client["GetProduct"].append(await timed(get_product(clients.channel)))
        client["unrouted"].append(await call_raw(clients.channel, UNROUTED_PATH))
        async with channel(egress(mesh, "orders-0")) as orders_egress:
            client["denied"].append(await call_raw(orders_egress, DENIED_PATH))
        await faults.inject(mesh, "payments", Fault.of(abort_percent=ABORT_PERCENT))
        try:
            for _ in range(FAULTY_CHECKOUTS):
                client["PlaceOrder with fault"].append(await checkout(clients, shopper))
            await histograms_merged(mesh)
            after = await raw_sample(mesh)
        finally:
            await faults.clear(mesh, "payments")
    return {
        "before": before,
        "after": after,
        "client": {kind: counted(outcomes) for kind, outcomes in client.items()},
    }


async def main() -> None:
    async with running_mesh() as mesh:
        document = await capture(mesh)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    asyncio.run(main())
