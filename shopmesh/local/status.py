"""`shopmesh status`: every process of a running local mesh with its health."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from shopmesh.envoy.admin import AdminError
from shopmesh.envoy.faults import active_keys
from shopmesh.layout import APP, SIDECAR
from shopmesh.local.handles import PodHandle
from shopmesh.local.health import SERVING, check_health, health_channel
from shopmesh.local.mesh import LOGS, RunningMesh, unhealthy_upstreams
from shopmesh.topology import GATEWAY


@dataclass(frozen=True)
class ProcessStatus:
    """One row of `shopmesh status`."""

    name: str
    kind: str
    pid: int | None
    alive: bool
    health: str
    healthy: bool
    detail: str


async def _app(mesh: RunningMesh, pod: PodHandle) -> ProcessStatus:
    alive = pod.app is not None and pod.app.alive()
    health = "stopped"
    if alive:
        async with health_channel(pod.health) as channel:
            health = await check_health(channel, pod.grpc_service)
    socket = str(pod.app_socket.relative_to(mesh.state_dir))
    pid = pod.app.pid if pod.app is not None else None
    return ProcessStatus(pod.app_name, APP, pid, alive, health, health == SERVING, socket)


async def _sidecar(pod: PodHandle) -> ProcessStatus:
    alive = pod.sidecar is not None and pod.sidecar.alive()
    ready = await pod.admin.state() if alive else "stopped"
    ports = pod.ports
    detail = f"inbound :{ports.inbound} health :{ports.health} metrics :{ports.metrics}"
    healthy = ready == "LIVE"
    if alive and pod.calls:
        total, bad = await unhealthy_upstreams(pod.admin)
        detail += f", upstreams {total - len(bad)}/{total} healthy"
        healthy = healthy and not bad
    if alive:
        with contextlib.suppress(AdminError, ValueError):
            faults = active_keys(await pod.admin.runtime())
            if faults:
                detail += ", FAULT " + " ".join(
                    f"{key.rpartition('.')[2]}={value}" for key, value in faults.items()
                )
    pid = pod.sidecar.pid if pod.sidecar is not None else None
    return ProcessStatus(pod.sidecar_name, SIDECAR, pid, alive, ready, healthy, detail)


async def _gateway(mesh: RunningMesh) -> ProcessStatus:
    gateway = mesh.gateway
    alive = gateway.process is not None and gateway.process.alive()
    ready = await gateway.admin.state() if alive else "stopped"
    ports = gateway.ports
    detail = f"listener :{ports.listener} health :{ports.health} metrics :{ports.metrics}"
    healthy = ready == "LIVE"
    if alive:
        total, bad = await unhealthy_upstreams(gateway.admin)
        detail += f", upstreams {total - len(bad)}/{total} healthy"
        healthy = healthy and not bad
    return ProcessStatus(GATEWAY, GATEWAY, gateway.pid, alive, ready, healthy, detail)


def _log_keeper(mesh: RunningMesh) -> ProcessStatus:
    alive = mesh.logs is not None and mesh.logs.alive()
    pid = mesh.logs.pid if mesh.logs is not None else None
    word = "running" if alive else "stopped"
    return ProcessStatus(LOGS, LOGS, pid, alive, word, alive, f"caps {mesh.paths.logs}")


async def mesh_status(mesh: RunningMesh) -> list[ProcessStatus]:
    """Every app, sidecar, the gateway and the log keeper: pid, alive, health."""
    rows = []
    for pod in mesh.pods.values():
        rows += [_app(mesh, pod), _sidecar(pod)]
    rows.append(_gateway(mesh))
    return [*await asyncio.gather(*rows), _log_keeper(mesh)]
