"""This install's card-fingerprint key: 32 random bytes in a 0600 file beside the payments
database, made the first time payments starts. It lives as long as the fingerprints it made
(locally in the state directory's data, on Kubernetes on the same volume as the database), so
the same card under the same idempotency key stays the same charge across restarts; lose it
and replays of earlier keys are refused as IDEMPOTENCY_KEY_REUSED. Back it up with the
database, and keep both from anyone who should not tell cards apart."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from services.common.config import ConfigError
from services.common.database import PRIVATE_DIRECTORY

KEY_BYTES = 32
"""As long as the HMAC-SHA256 output: the key is no weaker than the fingerprint."""


def key_path(db_path: Path) -> Path:
    """Where the key of the database at `db_path` lives (payments.db -> payments.key)."""
    return db_path.with_suffix(".key")


def load_or_create(path: Path) -> bytes:
    """The key in `path`, made first if there is none. Replicas starting together agree: each
    writes a candidate aside and links it into place, and the first link wins."""
    if not path.exists():
        path.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        descriptor, candidate = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            # mkstemp creates the file 0600.
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(KEY_BYTES))
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another replica's key won
                os.link(candidate, path)
        finally:
            os.unlink(candidate)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{path} is not a card-fingerprint key ({len(key)} bytes, expected {KEY_BYTES}); "
            "restore it from the backup of this database"
        )
    return key
