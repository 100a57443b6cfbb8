"""The whole mesh for tests: every app, its sidecar and the gateway, started by the code behind
`shopmesh up` in a fresh state directory, and always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, stop_databases, up
from tests.support.paths import DESCRIPTOR_SET, ENVOY, MESH_FILE, STOREFRONT

MESH_STARTUP_DEADLINE = 60.0
"""Generous for a loaded CI machine; a warm start takes one to two seconds."""
KEEP_STATE_VARIABLE = "SHOPMESH_TEST_KEEP_STATE"
"""Set to 1 to keep each mesh's state directory (logs, access logs, data) after the tests."""


def short_temp_dir(prefix: str) -> Path:
    """A fresh directory with a short path: Unix socket paths are limited to ~100 bytes, which
    pytest's tmp_path does not guarantee."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.asynccontextmanager
async def running_mesh(**options: Any) -> AsyncIterator[RunningMesh]:
    """Start the whole mesh in a fresh, short temporary state directory and always stop every
    process when the block exits.

    `options` override MeshOptions fields, e.g. `app_env={"SHOPMESH_ORDERS_RECOVERY_INTERVAL":
    "0.5"}` or `grace_seconds=5`; the defaults suit tests (2 s drain grace, Envoy warnings
    only). A failed start has already stopped what it started and raises MeshError naming the
    process, with the end of its log."""
    state_dir = short_temp_dir("smm-")
    settings: dict[str, Any] = {
        "state_dir": state_dir,
        "topology": MESH_FILE,
        "descriptor": DESCRIPTOR_SET,
        "storefront": STOREFRONT,
        "envoy": ENVOY,
        "startup_timeout": MESH_STARTUP_DEADLINE,
        "grace_seconds": 2.0,
        "envoy_log_level": "warning",
        **options,
    }
    try:
        mesh = await up(MeshOptions(**settings))
        try:
            yield mesh
        finally:
            await mesh.stop()
            # Before the state directory goes: a mesh on Postgres runs its cluster from it.
            await stop_databases(mesh.paths)
    finally:
        if os.environ.get(KEEP_STATE_VARIABLE) == "1":
            print(f"mesh state kept in {state_dir}", file=sys.stderr)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
