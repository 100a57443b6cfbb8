"""The keys that sign shoppers' access tokens, in a local mesh: rotate them, and make the
gateway verify with the new JWKS.

users signs with the new key from its next sign-in on (it notices the replaced file); Envoy
reads the JWKS only when it loads its configuration, so the gateway is restarted: the edge is
unreachable for the second it takes (in-flight calls through it fail). The JWKS keeps the
previous key, so every token signed before the rotation stays valid until it expires.
"""

from __future__ import annotations

import time

from services.common.clock import utc_now
from services.users.keys import KeyDirectory, KeyRing, RotationTooSoon
from services.users.tokens import ACCESS_TOKEN_LIFETIME
from shopmesh.layout import StateDir
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh


def ensure_signing_keys(paths: StateDir) -> KeyRing:
    """The state directory's key ring, made if absent: before anything starts, so the gateway
    always finds the JWKS it verifies with (users reads the same directory)."""
    return KeyDirectory(paths.signing_keys).ensure(utc_now())


def rotate_keys(paths: StateDir, *, force: bool = False) -> KeyRing:
    """A new current key in the state directory's key ring (MeshError if it is too soon: see
    services/users/keys.py, or if there is no ring yet)."""
    directory = KeyDirectory(paths.signing_keys)
    if not directory.keys_file.exists():
        raise MeshError(f"no signing keys in {paths.signing_keys}: start the mesh once (`up`)")
    try:
        return directory.rotate(utc_now(), ACCESS_TOKEN_LIFETIME, force=force)
    except RotationTooSoon as error:
        raise MeshError(f"not rotated: {error}") from None


async def rotate(mesh: RunningMesh, *, force: bool = False, within: float = 30.0) -> KeyRing:
    """Rotate the running mesh's signing keys and restart its gateway with their new JWKS."""
    ring = rotate_keys(mesh.paths, force=force)
    await mesh.restart_gateway(time.monotonic() + within)
    return ring
