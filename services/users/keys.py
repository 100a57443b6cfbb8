"""The keys that sign access tokens, the JWKS that publishes them, and their rotation.

The key directory (SHOPMESH_USERS_KEYS_DIR, default `users-keys` beside the users database),
mode 0700, holds:

- `signing-keys.json` (0600): the current and the previous private key (P-256, PEM), written
  whole as one `KeyRing` document. One file, so a rotation is one atomic rename.
- `jwks.json` (0600 too: the gateway that reads it runs as the same user, and a Kubernetes
  ConfigMap made of it sets its own mode): their public halves as a JSON Web Key Set (RFC
  7517), current first: the document a gateway verifies tokens with (Envoy's jwt_authn
  `local_jwks` with a filename). Envoy reads that file when it loads its configuration, not
  when the file changes: after a rotation the gateway restarts (`shopmesh keys rotate`).
- `.lock`: serialises writers (a users process starting, a rotation).

Files are replaced atomically (temporary file, fsync, rename): readers see the old document
or the new one, never a mix. A key's `kid` is its RFC 7638 thumbprint, so it names the key
itself and two processes can never give one id to two keys.

Rotation (`python -m services.users.keys rotate`, or `rotate()`) makes a new current key and
keeps the current one as previous; the key before that is dropped. It writes `jwks.json`
first and `signing-keys.json` second, so nothing signs with a key the JWKS does not list yet.
The dropped key signed tokens until the last rotation, so rotating again is refused while
those tokens may be alive (the current key is younger than an access token's lifetime plus a
minute), unless forced (a leaked key). A running users process notices a rotation on its next
sign-in (the file's inode changes) and signs with the new key from then on.

On Kubernetes several pods cannot share this directory. There the keys are made outside the
pods (`shopmesh k8s issue-keys`, as for certificates): the directory becomes a Secret mounted
read-only here in users, `jwks.json` a ConfigMap mounted in the gateway (k8s/README.md says
how to rotate there: the JWKS reaches the gateways before the new key reaches users).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.common.clock import from_micros, to_micros, utc_now
from services.common.files import write_atomically
from services.users.tokens import ACCESS_TOKEN_LIFETIME, ALGORITHM

KEYS_DIR_VARIABLE = "SHOPMESH_USERS_KEYS_DIR"
KEYS_FILE = "signing-keys.json"
JWKS_FILE = "jwks.json"
RING_VERSION = 1
# Clock differences between the machines that sign and verify, and a sign-in in flight while
# the rotation lands.
ROTATION_LEEWAY = timedelta(minutes=1)
_PRIVATE_FILE = 0o600
_PRIVATE_DIRECTORY = 0o700


class RotationTooSoon(Exception):
    """Rotating now would drop a key that signed access tokens which have not expired yet."""


@dataclass(frozen=True)
class SigningKey:
    """One P-256 key pair: `private_pem` is PKCS#8 PEM, `activated_us` when it became current."""

    kid: str
    private_pem: str
    activated_us: int

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key itself, for signing."""
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {self.kid} is not an EC key")
        return key

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with its `kid`, `alg` and `use`."""
        return {**_public_jwk(self.private_key()), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


@dataclass(frozen=True)
class KeyRing:
    """What `signing-keys.json` holds: the key that signs now and the one before it."""

    current: SigningKey
    previous: SigningKey | None = None
    version: int = RING_VERSION

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of every key that verifies live tokens, current first."""
        keys = [self.current, *([self.previous] if self.previous else [])]
        return {"keys": [key.public_jwk() for key in keys]}

    def jwks_json(self) -> str:
        """`jwks` as the JSON document `jwks.json` holds."""
        return json.dumps(self.jwks(), indent=2)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> KeyRing:
        document = json.loads(data)
        if document.get("version") != RING_VERSION:
            raise ValueError(f"{KEYS_FILE}: unknown version {document.get('version')!r}")
        previous = document["previous"]
        return cls(
            current=SigningKey(**document["current"]),
            previous=None if previous is None else SigningKey(**previous),
        )


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {name: jwk[name] for name in ("kty", "crv", "x", "y")}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the required members, sorted, without whitespace."""
    canonical = json.dumps({name: jwk[name] for name in ("crv", "kty", "x", "y")}, sort_keys=True)
    digest = hashlib.sha256(canonical.replace(" ", "").encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_signing_key(now: datetime) -> SigningKey:
    """A fresh P-256 key, current from `now`."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(thumbprint(_public_jwk(key)), pem.decode(), to_micros(now))


class KeyDirectory:
    """The key directory of the module docstring: creates, reads, reloads and rotates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys_file = path / KEYS_FILE
        self.jwks_file = path / JWKS_FILE
        self._loaded: tuple[tuple[int, int], KeyRing] | None = None

    def ensure(self, now: datetime) -> KeyRing:
        """The ring on disk, created with a new key if there is none; `jwks.json` rewritten if
        missing or stale (so deleting it is a way to repair it). A directory that already
        holds both, matching, is only read: it may be a read-only mount (a Kubernetes Secret)."""
        if self.keys_file.exists() and self.jwks_file.exists():
            ring = self.ring()
            if self.jwks_file.read_bytes() == ring.jwks_json().encode():
                return ring
        with self._locked():
            if self.keys_file.exists():
                ring = KeyRing.from_json(self.keys_file.read_bytes())
            else:
                ring = KeyRing(current=new_signing_key(now))
            self._publish(ring)
            if not self.keys_file.exists():
                write_atomically(self.keys_file, ring.to_json(), _PRIVATE_FILE)
        return self.ring()

    def rotate(self, now: datetime, token_lifetime: timedelta, *, force: bool = False) -> KeyRing:
        """Make a new current key, keep the current one as previous, drop the one before.

        Raises RotationTooSoon if the dropped key may have signed tokens still alive (see the
        module docstring), unless `force`.
        """
        with self._locked():
            ring = KeyRing.from_json(self.keys_file.read_bytes())
            safe_from = from_micros(ring.current.activated_us) + token_lifetime + ROTATION_LEEWAY
            if now < safe_from and ring.previous is not None and not force:
                raise RotationTooSoon(
                    f"the previous key {ring.previous.kid} signed tokens that may be valid until "
                    f"{safe_from.isoformat(timespec='seconds')}; rotate after that, or force it "
                    "(their holders sign in again)"
                )
            rotated = KeyRing(current=new_signing_key(now), previous=ring.current)
            self._publish(rotated)
            write_atomically(self.keys_file, rotated.to_json(), _PRIVATE_FILE)
        return self.ring()

    def ring(self) -> KeyRing:
        """The ring on disk, read again only when the file was replaced since the last read."""
        status = self.keys_file.stat()
        identity = (status.st_ino, status.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != identity:
            self._loaded = (identity, KeyRing.from_json(self.keys_file.read_bytes()))
        return self._loaded[1]

    def _publish(self, ring: KeyRing) -> None:
        document = ring.jwks_json().encode()
        if not self.jwks_file.exists() or self.jwks_file.read_bytes() != document:
            write_atomically(self.jwks_file, document, _PRIVATE_FILE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(mode=_PRIVATE_DIRECTORY, parents=True, exist_ok=True)
        descriptor = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, _PRIVATE_FILE)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)


def main(argv: list[str] | None = None) -> int:
    """`python -m services.users.keys rotate --keys-dir DIR [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m services.users.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser("rotate", help="make a new current signing key")
    rotate.add_argument("--keys-dir", type=Path, default=os.environ.get(KEYS_DIR_VARIABLE))
    rotate.add_argument("--force", action="store_true", help="even if live tokens lose their key")
    arguments = parser.parse_args(argv)
    if arguments.keys_dir is None:
        parser.error(f"give --keys-dir or set {KEYS_DIR_VARIABLE}")
    directory = KeyDirectory(arguments.keys_dir)
    if not directory.keys_file.exists():
        parser.error(f"{directory.keys_file} does not exist: start users once to create it")
    try:
        ring = directory.rotate(utc_now(), ACCESS_TOKEN_LIFETIME, force=arguments.force)
    except RotationTooSoon as error:
        print(f"not rotated: {error}", file=sys.stderr)
        return 1
    previous = ring.previous.kid if ring.previous else "none"
    print(f"current key {ring.current.kid}, previous {previous}; {directory.jwks_file} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
