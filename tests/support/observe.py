"""What the mesh's Envoys saw: stat deltas around an experiment, a caller's view of a replica's
health, per-pod faults, and the JSON access logs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from shopmesh.envoy.faults import (
    ABORT_GRPC_STATUS,
    ABORT_PERCENT,
    DELAY_MS,
    DELAY_PERCENT,
    NO_FAULT,
)
from shopmesh.envoy.upstream import cluster_name
from shopmesh.local.mesh import RunningMesh


class Stats:
    """Counters of one Envoy (pod name or "gateway"), read before and after an experiment."""

    def __init__(self, mesh: RunningMesh, name: str) -> None:
        self.admin = mesh.admin(name)
        self.before: dict[str, int] = {}

    async def snapshot(self) -> Stats:
        self.before = await self.admin.stats()
        return self

    async def delta(self, *names: str) -> dict[str, int]:
        """How much each stat grew since the snapshot (0 for stats that do not exist)."""
        now = await self.admin.stats()
        return {name: now.get(name, 0) - self.before.get(name, 0) for name in names}


async def stats_of(mesh: RunningMesh, name: str) -> Stats:
    """A Stats of `name` with its snapshot taken now."""
    return await Stats(mesh, name).snapshot()


async def upstream_health(mesh: RunningMesh, caller: str, service: str) -> dict[str, str]:
    """host:port -> Envoy health flags of each replica of `service`, as the Envoy `caller` (a
    pod name or the gateway) sees it ("healthy", "/failed_active_hc", ...)."""
    return (await mesh.admin(caller).host_health()).get(cluster_name(service), {})


async def host_flags(mesh: RunningMesh, caller: str, pod: str) -> str:
    """The health flags the Envoy `caller` holds for replica `pod` ("healthy", or e.g.
    "/failed_active_hc/failed_outlier_check")."""
    hosts = await upstream_health(mesh, caller, mesh.pod(pod).service)
    return hosts[mesh.pod(pod).inbound]


FAULT_KEYS = {
    "abort_percent": ABORT_PERCENT,
    "abort_grpc_status": ABORT_GRPC_STATUS,
    "delay_percent": DELAY_PERCENT,
    "delay_ms": DELAY_MS,
}


async def pod_fault(mesh: RunningMesh, pod: str, **keys: int) -> None:
    """Fault-inject one replica only (its own inbound sidecar), through the same runtime keys
    `shopmesh fault` sets for every replica (abort_percent, abort_grpc_status, delay_percent,
    delay_ms). No keys: clear them all."""
    values = dict(NO_FAULT)
    values.update({FAULT_KEYS[name]: str(value) for name, value in keys.items()})
    await mesh.pod(pod).admin.runtime_modify(values)


def access_log(path: Path, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every entry of a JSON access log (one JSON object a line); with `since`, only the
    requests that started at or after it."""
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if since is None:
        return entries
    return [entry for entry in entries if datetime.fromisoformat(entry["time"]) >= since]
