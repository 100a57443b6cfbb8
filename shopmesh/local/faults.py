"""Fault injection into a running local mesh: the same fault on every replica's inbound
sidecar of a service, at once and without a restart (shopmesh.envoy.faults has the keys)."""

from __future__ import annotations

from collections.abc import Mapping

from shopmesh.envoy.admin import AdminError
from shopmesh.envoy.faults import NO_FAULT, Fault, active_keys
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh


async def _set_runtime(mesh: RunningMesh, service: str, values: Mapping[str, str]) -> None:
    for pod in mesh.replicas(service):
        try:
            await pod.admin.runtime_modify(values)
        except AdminError as error:
            raise MeshError(str(error)) from None


async def inject(mesh: RunningMesh, service: str, fault: Fault) -> None:
    """Inject `fault` into every call reaching `service`. Health checks and reflection are
    exempt. Undo with `clear`."""
    await _set_runtime(mesh, service, fault.runtime())


async def clear(mesh: RunningMesh, service: str) -> None:
    """Remove every injected fault from `service`'s sidecars (back to the config: none)."""
    await _set_runtime(mesh, service, NO_FAULT)


async def active(mesh: RunningMesh, service: str) -> dict[str, dict[str, str]]:
    """Pod -> the fault runtime keys set on its sidecar (empty when there is no fault)."""
    result: dict[str, dict[str, str]] = {}
    for pod in mesh.replicas(service):
        result[pod.name] = active_keys(await pod.admin.runtime())
    return result
