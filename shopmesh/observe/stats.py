"""Golden metrics of a running local mesh (`shopmesh stat`, the dashboard): read every Envoy's
stats from its admin endpoint (`sample`), compare two samples (`between`, in
`shopmesh.observe.golden`, which says what is counted where), or keep recent samples so that a
caller polling every second gets the stats of a window at once (`Sampler`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from shopmesh.envoy.admin import AdminClient, AdminError
from shopmesh.envoy.faults import active_keys
from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.envoystats import EnvoyStats
from shopmesh.observe.golden import (
    FAILURE_CODES,
    EdgeStats,
    GatewayStats,
    MeshStats,
    Sample,
    ServiceStats,
    Traffic,
    between,
)
from shopmesh.topology import GATEWAY

__all__ = [
    "FAILURE_CODES",
    "STATS_PATTERN",
    "EdgeStats",
    "GatewayStats",
    "MeshStats",
    "Sample",
    "Sampler",
    "ServiceStats",
    "Traffic",
    "between",
    "measure",
    "sample",
]

SAMPLE_MARGIN = 5.0
"""Seconds of samples a Sampler keeps beyond the longest window it is asked for."""
STATS_PATTERN = (
    r"^(server\.uptime"
    r"|cluster\.[^.]+\.(grpc\..+|upstream_rq_time|upstream_rq_retry(_success|_overflow)?"
    r"|upstream_rq_(pending|active)_overflow|upstream_cx(_pool)?_overflow"
    r"|outlier_detection\.ejections_(enforced_total|active))"
    r"|http\.[^.]+\.(rbac\.denied|no_route)"
    r"|[^.]+\.http_local_rate_limit\.rate_limited)$"
)
"""Only the stats read here: a sample of the whole mesh is then tens of kilobytes, not MBs."""


# --- reading a running mesh -------------------------------------------------------------------


async def _stats(admin: AdminClient) -> EnvoyStats | None:
    try:
        return EnvoyStats.parse(await admin.stats_json(STATS_PATTERN, used_only=True))
    except AdminError:
        return None


async def _fault(admin: AdminClient) -> dict[str, str]:
    try:
        return active_keys(await admin.runtime())
    except AdminError:
        return {}


async def sample(mesh: RunningMesh) -> Sample:
    """Read every Envoy of `mesh` (an Envoy that does not answer is left out)."""
    started = time.monotonic()
    names = [*mesh.pods, GATEWAY]
    stats, faults = await asyncio.gather(
        asyncio.gather(*(_stats(mesh.admin(name)) for name in names)),
        asyncio.gather(*(_fault(pod.admin) for pod in mesh.pods.values())),
    )
    return Sample(
        at=(started + time.monotonic()) / 2,
        wall=time.time(),
        topology=mesh.topology,
        pods={name: pod.service for name, pod in mesh.pods.items()},
        envoys={name: s for name, s in zip(names, stats, strict=True) if s is not None},
        faults=dict(zip(mesh.pods, faults, strict=True)),
    )


async def measure(mesh: RunningMesh, seconds: float) -> MeshStats:
    """The golden metrics of the next `seconds`."""
    first = await sample(mesh)
    await asyncio.sleep(max(0.0, first.at + seconds - time.monotonic()))
    return between(first, await sample(mesh))


class Sampler:
    """Recent samples of one mesh, so that a caller polling every second gets the stats of a
    window at once instead of waiting a whole window each time: each `poll()` adds a sample,
    and `window(seconds)` compares the latest with the one taken `seconds` before it."""

    def __init__(self, take: Callable[[], Awaitable[Sample]], keep: float = 600.0) -> None:
        """`take` reads the mesh (e.g. `lambda: sample(mesh)`); samples older than `keep`
        seconds are dropped, so windows up to `keep` seconds can be asked for."""
        self._take = take
        self._keep = keep
        self._samples: collections.deque[Sample] = collections.deque()

    @classmethod
    def of(cls, mesh: RunningMesh, keep: float = 600.0) -> Sampler:
        return cls(lambda: sample(mesh), keep)

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(self._samples)

    async def poll(self) -> Sample:
        """Take a sample and keep it."""
        taken = await self._take()
        self._samples.append(taken)
        while taken.at - self._samples[0].at > self._keep:
            self._samples.popleft()
        return taken

    def window(self, seconds: float) -> MeshStats | None:
        """The stats of the last `seconds` up to the latest sample: from the newest sample at
        least `seconds` older than it, or from the oldest kept while fewer seconds have been
        sampled (MeshStats.window says how long). None before two samples."""
        if seconds <= 0:
            raise ValueError(f"a window lasts more than 0 seconds, got {seconds}")
        if len(self._samples) < 2:
            return None
        latest = self._samples[-1]
        start = self._samples[0]
        for candidate in self._samples:
            if latest.at - candidate.at < seconds:
                break
            start = candidate
        return between(start, latest)

    async def stats(self, seconds: float) -> MeshStats | None:
        """`poll()`, then `window(seconds)`."""
        await self.poll()
        return self.window(seconds)
