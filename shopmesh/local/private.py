"""The state directory is its user's alone: databases, logs and access logs hold accounts,
orders and who called what, so no other local user may read them. Every directory is 0700 and
every file 0600: what `up` writes is written under a private umask, every process of the mesh
starts with it (so its databases, -wal/-shm files and access logs are created that way), and
a state directory an earlier shopmesh left readable is closed up first.

Sockets keep the modes their servers give them (the Envoy admin sockets 0600, the rest
owner-only through the umask): they are reached only through these private directories."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from services.common.database import PRIVATE_DIRECTORY as PRIVATE_DIRECTORY
from services.common.database import PRIVATE_FILE as PRIVATE_FILE

PRIVATE_UMASK = 0o077
"""Nothing created is readable, writable or searchable by group or others."""


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files and directories in the block with PRIVATE_UMASK. The umask belongs to the
    whole process: keep the block short and free of awaits."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(root: Path) -> None:
    """Create `root` 0700 if it is missing, and take group and other permissions away from it
    and from every directory and regular file under it (a state directory of an earlier
    release has 0755 directories and 0644 files)."""
    root.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if (stat.S_ISDIR(mode) or stat.S_ISREG(mode)) and mode & 0o077:
            path.chmod(stat.S_IMODE(mode) & ~0o077)


def open_private(path: Path) -> int:
    """A descriptor appending to `path`, created 0600 if it is missing."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
