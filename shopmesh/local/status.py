"""`shopmesh status`: every process of a running local mesh with its health."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from shopmesh.envoy.admin import AdminError
from shopmesh.envoy.faults import active_keys
from shopmesh.layout import APP, SIDECAR
from shopmesh.local.dashboard import DASHBOARD, DashboardLink, dashboard_link, dashboard_serves
from shopmesh.local.handles import PodHandle
from shopmesh.local.health import SERVING, check_health, health_channel
from shopmesh.local.mesh import COLLECTOR, LOGS, RunningMesh, unhealthy_upstreams
from shopmesh.local.reflection import REFLECTION, reflection_health
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


async def _reflection(mesh: RunningMesh) -> ProcessStatus:
    process = mesh.reflection
    alive = process is not None and process.alive()
    health = await reflection_health(mesh.paths) if alive else "stopped"
    socket = str(mesh.paths.reflection_socket.relative_to(mesh.state_dir))
    pid = process.pid if process is not None else None
    return ProcessStatus(REFLECTION, REFLECTION, pid, alive, health, health == SERVING, socket)


def _log_keeper(mesh: RunningMesh) -> ProcessStatus:
    alive = mesh.logs is not None and mesh.logs.alive()
    pid = mesh.logs.pid if mesh.logs is not None else None
    word = "running" if alive else "stopped"
    return ProcessStatus(LOGS, LOGS, pid, alive, word, alive, f"caps {mesh.paths.logs}")


def _collector(mesh: RunningMesh) -> ProcessStatus:
    alive = mesh.collector is not None and mesh.collector.alive()
    listening = alive and mesh.paths.collector_socket.exists()
    pid = mesh.collector.pid if mesh.collector is not None else None
    word = "listening" if listening else "stopped" if not alive else "starting"
    detail = f"keeps traces in {mesh.paths.traces.relative_to(mesh.state_dir)}"
    return ProcessStatus(COLLECTOR, COLLECTOR, pid, alive, word, listening, detail)


async def _dashboard(mesh: RunningMesh, link: DashboardLink, itself: bool) -> ProcessStatus:
    pid = mesh.dashboard.pid if mesh.dashboard is not None else None
    if itself:
        # Asked from inside the dashboard: it is this process, answering the request that asks.
        alive, serves, pid = True, True, os.getpid()
    else:
        alive = mesh.dashboard is not None and mesh.dashboard.alive()
        serves = alive and await dashboard_serves(link)
    word = "serving" if serves else "stopped" if not alive else "not answering"
    # The token stays out of this table: `shopmesh dashboard` prints the whole link.
    detail = f"{link.base}/ (the link with its token: shopmesh dashboard)"
    return ProcessStatus(DASHBOARD, DASHBOARD, pid, alive, word, serves, detail)


async def mesh_status(mesh: RunningMesh, *, from_dashboard: bool = False) -> list[ProcessStatus]:
    """Every app, sidecar, the gateway and its reflection service (unless the topology offers
    none), the dashboard (unless started without), the trace
    collector (unless spans go to the user's) and the log keeper: pid, alive, health.
    `from_dashboard`: the dashboard asks, and does not ask itself whether it serves."""
    rows = []
    for pod in mesh.pods.values():
        rows += [_app(mesh, pod), _sidecar(pod)]
    rows.append(_gateway(mesh))
    if REFLECTION in mesh.state.processes:
        rows.append(_reflection(mesh))
    link = dashboard_link(mesh.state)
    if link is not None:
        rows.append(_dashboard(mesh, link, from_dashboard))
    keepers = [_collector(mesh)] if COLLECTOR in mesh.state.processes else []
    return [*await asyncio.gather(*rows), *keepers, _log_keeper(mesh)]
