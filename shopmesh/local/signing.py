"""The keys that sign shoppers' access tokens, in a local mesh: rotate them, and make the
gateway verify with the new JWKS.

A rotation of a running mesh goes in the order services/users/keys.py describes: the new key
is staged (the JWKS lists it beside the current one, which keeps signing), the gateway
restarts to load that JWKS (Envoy reads it only when it loads its configuration), and only
then does users sign with the new key (it notices the replaced file on its next sign-in). So
no token is ever signed with a key the gateway does not know. The restart makes the edge
unreachable for about a second: in-flight calls and open streams through it (a
WatchNotifications, say) end, and clients reconnect. The JWKS keeps the previous key, so every
token signed before the rotation stays valid until it expires. If the restart fails, the key
stays staged and users keeps signing with the current one; rotating again takes it up.
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
    """A new current key in the key ring of a state directory whose mesh is not running (both
    steps of a rotation at once: no gateway to wait for). MeshError if it is too soon (see
    services/users/keys.py), or if there is no ring yet."""
    directory = _key_directory(paths)
    try:
        return directory.rotate(utc_now(), ACCESS_TOKEN_LIFETIME, force=force)
    except RotationTooSoon as error:
        raise MeshError(f"not rotated: {error}") from None


async def rotate(mesh: RunningMesh, *, force: bool = False, within: float = 30.0) -> KeyRing:
    """Rotate the running mesh's signing keys: stage a new key, restart the gateway with the
    JWKS that lists it, then sign with it (see the module docstring)."""
    directory = _key_directory(mesh.paths)
    try:
        directory.stage(utc_now(), ACCESS_TOKEN_LIFETIME, force=force)
    except RotationTooSoon as error:
        raise MeshError(f"not rotated: {error}") from None
    await mesh.restart_gateway(time.monotonic() + within)
    return directory.activate(utc_now())


def _key_directory(paths: StateDir) -> KeyDirectory:
    directory = KeyDirectory(paths.signing_keys)
    if not directory.keys_file.exists():
        raise MeshError(f"no signing keys in {paths.signing_keys}: start the mesh once (`up`)")
    return directory
