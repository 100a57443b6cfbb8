"""The mesh around a fuzz run: which processes run, outlier ejections in every Envoy that
load-balances (the gateway and each caller's sidecar, from their admin stats), upstream
health, what every process logged, and which fuzzed requests reached an app (the sidecars'
inbound access logs: calls the gateway's identity made that the sidecar passed to its app)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

from scripts.fuzz.logs import Flood, LogMark, floods
from shopmesh.envoy.sidecar import INBOUND
from shopmesh.local.mesh import RunningMesh, unhealthy_upstreams
from shopmesh.topology import GATEWAY

EJECTIONS = ".outlier_detection.ejections_enforced_total"
EJECTED_NOW = ".outlier_detection.ejections_active"
ACCESS_LOG_SETTLE = 0.3
"""Seconds between two reads of the access logs that must agree: Envoy flushes them every
100 ms (the supervisor's --file-flush-interval-msec)."""
ACCESS_LOG_WAIT = 5.0


def balancers(mesh: RunningMesh) -> list[str]:
    """Every Envoy that load-balances over replicas: the gateway and each caller's sidecar."""
    return [GATEWAY, *(pod.name for pod in mesh.pods.values() if pod.calls)]


async def ejections(mesh: RunningMesh, suffix: str = EJECTIONS) -> Counter[str]:
    """`<envoy> <cluster>` -> the outlier-detection stat ending in `suffix`."""
    counts: Counter[str] = Counter()
    for envoy in balancers(mesh):
        for name, value in (await mesh.admin(envoy).stats()).items():
            if name.startswith("cluster.svc_") and name.endswith(suffix):
                counts[f"{envoy} {name.split('.')[1]}"] = value
    return counts


@dataclass(frozen=True)
class Before:
    started: float
    pids: dict[str, int | None]
    ejections: Counter[str]
    logs: list[LogMark]
    access: dict[str, LogMark]


@dataclass(frozen=True)
class After:
    seconds: float
    crashed: list[str]
    ejected: Counter[str]
    """`<envoy> <cluster>` -> ejections enforced during the run."""
    unhealthy: list[str]
    """Upstream hosts not healthy at the end, in any balancing Envoy."""
    log_lines: dict[str, int]
    floods: list[Flood]
    reached: Counter[str] = field(default_factory=Counter)
    """Pod -> fuzzed requests its sidecar passed to its app."""


def process_logs(mesh: RunningMesh) -> list[LogMark]:
    """Every app's and Envoy's own log (not the access logs)."""
    return [LogMark.of(process.log) for process in mesh.processes()]


async def look_before(mesh: RunningMesh) -> Before:
    return Before(
        started=time.monotonic(),
        pids={p.name: p.pid for p in mesh.processes() if p.alive()},
        ejections=await ejections(mesh),
        logs=process_logs(mesh),
        access={name: LogMark.of(pod.access_log) for name, pod in mesh.pods.items()},
    )


def reached(mesh: RunningMesh, access: dict[str, LogMark]) -> Counter[str]:
    """Pod -> lines since the marks of requests from the gateway that its app served."""
    gateway = mesh.topology.spiffe_id(GATEWAY)
    counts: Counter[str] = Counter()
    for pod, mark in access.items():
        for line in mark.new_lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if (
                entry.get("listener") == INBOUND
                and entry.get("peer") == gateway
                and entry.get("upstream_host") not in (None, "", "-")
            ):
                counts[pod] += 1
    return counts


async def settled_reached(mesh: RunningMesh, access: dict[str, LogMark]) -> Counter[str]:
    """`reached` once two reads ACCESS_LOG_SETTLE apart agree (or after ACCESS_LOG_WAIT)."""
    deadline = time.monotonic() + ACCESS_LOG_WAIT
    previous = reached(mesh, access)
    while time.monotonic() < deadline:
        await asyncio.sleep(ACCESS_LOG_SETTLE)
        current = reached(mesh, access)
        if current == previous:
            return current
        previous = current
    return previous


async def look_after(mesh: RunningMesh, before: Before) -> After:
    seconds = time.monotonic() - before.started
    alive = {p.name: p.pid for p in mesh.processes() if p.alive()}
    crashed = [
        name if name not in alive else f"{name} (pid {pid} replaced by {alive[name]})"
        for name, pid in before.pids.items()
        if alive.get(name) != pid
    ]
    now = await ejections(mesh)
    unhealthy: list[str] = []
    for envoy in balancers(mesh):
        _, bad = await unhealthy_upstreams(mesh.admin(envoy))
        unhealthy += [f"{envoy}: {host}" for host in bad]
    reached_apps = await settled_reached(mesh, before.access)
    counts, flooded = floods(before.logs, seconds)
    return After(
        seconds=seconds,
        crashed=crashed,
        ejected=now - before.ejections,
        unhealthy=unhealthy,
        log_lines=counts,
        floods=flooded,
        reached=reached_apps,
    )
