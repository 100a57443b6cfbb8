"""The gateway's reflection service as a process of the local mesh (shopmesh.reflection): its
record, and whether it serves."""

from __future__ import annotations

from pathlib import Path

from shopmesh.layout import LocalLayout, StateDir
from shopmesh.local.health import SERVING, check_health, health_channel
from shopmesh.local.state import ProcessRecord
from shopmesh.reflection.api import reflection_args

REFLECTION = "reflection"
"""The reflection service's process name and kind."""


def reflection_record(python: Path, layout: LocalLayout) -> ProcessRecord:
    """The reflection service of `gateway.exposes`, on the state directory's socket."""
    args = reflection_args(layout.topology, layout.reflection_socket(), layout.descriptor_set())
    return ProcessRecord(REFLECTION, REFLECTION, [str(python), "-m", *args], {})


async def reflection_health(paths: StateDir) -> str:
    """SERVING, NOT_SERVING, or `unreachable (<gRPC code>)`."""
    async with health_channel(f"unix:{paths.reflection_socket}") as channel:
        return await check_health(channel, "")


async def reflection_serves(paths: StateDir) -> bool:
    return await reflection_health(paths) == SERVING
