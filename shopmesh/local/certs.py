"""Certificates of a running local mesh: rotate every identity and wait until every Envoy
serves its new certificate (file-based SDS: no restart)."""

from __future__ import annotations

import functools
import time

from shopmesh.envoy.admin import AdminClient
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.wait import until
from shopmesh.pki import PkiError, rotate_certificates
from shopmesh.topology import GATEWAY


async def _serves(admin: AdminClient, serial: int) -> bool:
    return serial in await admin.served_serials()


async def rotate(mesh: RunningMesh, within: float = 10.0) -> dict[str, int]:
    """Re-issue every identity's certificate in place and wait until every running Envoy
    serves its new one. Returns identity -> new serial."""
    try:
        serials = rotate_certificates(mesh.paths.certs, mesh.topology.spiffe_ids)
    except PkiError as error:
        raise MeshError(str(error)) from None
    envoys = [(pod.admin, pod.service) for pod in mesh.pods.values()]
    envoys.append((mesh.gateway.admin, GATEWAY))
    deadline = time.monotonic() + within
    for admin, identity in envoys:
        await until(
            functools.partial(_serves, admin, serials[identity]),
            f"{admin.name} to load {identity}'s new certificate",
            deadline,
        )
    return serials
