"""What `shopmesh up` leaves on disk is its user's alone: the state directory and every directory
in it are 0700, every file (databases with their -wal/-shm, logs, access logs, rendered configs,
certificates, the state file) 0600, so no other local user reads accounts, orders or logs.
Sockets are left out: their servers set their modes (the Envoy admin sockets 0600, the others
owner-only through the umask) and they are reached only through those private directories.

And what payments keeps of the cards of real checkouts is no payment token, in no byte of its
database or WAL."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from services.payments.domain import TEST_TOKENS
from shopmesh.local.mesh import RunningMesh
from tests.support.clients import MeshClients
from tests.support.databases import files_containing
from tests.support.mesh import running_mesh, short_temp_dir

pytestmark = pytest.mark.asyncio(loop_scope="module")

COMMON_UMASK = 0o022
"""The usual login umask: left alone, files come out 0644 and directories 0755."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh() -> AsyncIterator[RunningMesh]:
    """The mesh in a state directory `up` creates itself, started with the common umask."""
    parent = short_temp_dir("smp-")
    previous = os.umask(COMMON_UMASK)
    try:
        async with running_mesh(state_dir=parent / "var") as running:
            yield running
    finally:
        os.umask(previous)
        shutil.rmtree(parent, ignore_errors=True)


def open_to_others(root: Path) -> list[str]:
    """Every directory and regular file under `root` (and `root` itself) that group or other
    users may read, write or enter, with its mode."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) and mode & 0o077:
            found.append(f"{path.relative_to(root)} {stat.filemode(mode)}")
    return found


async def test_the_state_directory_is_private_to_its_user(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    # A checkout writes every database (and its -wal and -shm) and every access log.
    await mesh_clients.checkout()
    data = {path.name for path in mesh.paths.data.iterdir()}
    assert {"orders.db-wal", "payments.db-shm"} <= data
    assert open_to_others(mesh.paths.root) == []


async def test_checkouts_leave_no_payment_token_in_the_payments_database(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    shopper = await mesh_clients.create_user()
    for token in ("tok_visa", "tok_mastercard", "tok_chargeDeclined"):
        await mesh_clients.place_order(shopper, payment_token=token)
    payments = mesh.paths.database("payments")
    assert {token: files_containing(payments, token.encode()) for token in TEST_TOKENS} == {
        token: [] for token in TEST_TOKENS
    }
