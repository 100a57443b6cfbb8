"""The keys that sign access tokens, the JWKS that publishes them, and their rotation.

The key directory (SHOPMESH_USERS_KEYS_DIR, default `users-keys` beside the users database),
mode 0700, holds:

- `signing-keys.json` (0600): the current and the previous private key (P-256, PEM), and
  during a rotation the staged one, written whole as one `KeyRing` document. One file, so each
  step of a rotation is one atomic rename.
- `jwks.json` (0600 too: the gateway that reads it runs as the same user, and a Kubernetes
  ConfigMap made of it sets its own mode): their public halves as a JSON Web Key Set (RFC
  7517), newest first: the document a gateway verifies tokens with (Envoy's jwt_authn
  `local_jwks` with a filename). Envoy reads that file when it loads its configuration, not
  when the file changes: after a rotation the gateway restarts (`shopmesh keys rotate`).
- `.lock`: serialises writers (a users process starting, a rotation).

Files are replaced atomically (temporary file, fsync, rename): readers see the old document
or the new one, never a mix. A key's `kid` is its RFC 7638 thumbprint, so it names the key
itself and two processes can never give one id to two keys.

Rotation is two steps with the gateways' reload between them, so that no gateway meets a
token signed with a key it does not know:

1. `stage()` makes a new key and publishes it: `jwks.json` lists the new key and the current
   one, and the previous key is dropped. Nothing signs with the new key yet.
2. Every gateway loads that JWKS (Envoy: a restart).
3. `activate()` makes the staged key current (users signs with it from its next sign-in) and
   keeps the current one as previous. The JWKS stays byte for byte what step 1 published.

`rotate()` (`python -m services.users.keys rotate`) does both steps at once, for a directory
no running gateway reads (`stage` and `activate` are subcommands too). Each step writes
`jwks.json` before `signing-keys.json`, so nothing signs with a key the JWKS does not list.
The dropped key signed tokens until the last rotation, so staging again is refused while
those tokens may be alive (the current key is younger than an access token's lifetime plus a
minute), unless forced (a leaked key). A running users process notices each step on its next
sign-in (the file's inode changes).

On Kubernetes several pods cannot share this directory. There the keys are made outside the
pods (`shopmesh k8s issue-keys`, as for certificates): the directory becomes a Secret mounted
read-only here in users, `jwks.json` a ConfigMap mounted in the gateway. There `rotate()`
runs on that directory, and the order of the steps is the order its files are applied
(k8s/README.md): the JWKS reaches the gateways before the new key reaches users.
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
from dataclasses import asdict, dataclass, replace
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


class NothingStaged(Exception):
    """`activate()` without a staged key: stage one first."""


@dataclass(frozen=True)
class SigningKey:
    """One P-256 key pair: `private_pem` is PKCS#8 PEM, `activated_us` when it became current
    (of a staged key: when it was staged)."""

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
    """What `signing-keys.json` holds: the key that signs now, the one before it, and the one
    that signs next once every gateway knows it (`staged`, during a rotation)."""

    current: SigningKey
    previous: SigningKey | None = None
    staged: SigningKey | None = None
    version: int = RING_VERSION

    def jwks(self) -> dict[str, Any]:
        """The JWK Set of every key that verifies tokens, newest first: the staged key (whose
        tokens are about to come), the current one, the previous one (whose tokens may live)."""
        keys = [key for key in (self.staged, self.current, self.previous) if key is not None]
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
        previous, staged = document["previous"], document.get("staged")
        return cls(
            current=SigningKey(**document["current"]),
            previous=None if previous is None else SigningKey(**previous),
            staged=None if staged is None else SigningKey(**staged),
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

    def stage(self, now: datetime, token_lifetime: timedelta, *, force: bool = False) -> KeyRing:
        """Step 1 of a rotation: publish a new key beside the current one, which keeps signing;
        drop the previous key. A key already staged stays the one staged (a rotation that
        stopped before `activate` is taken up again).

        Raises RotationTooSoon if the dropped key may have signed tokens still alive (see the
        module docstring), unless `force`.
        """
        with self._locked():
            ring = KeyRing.from_json(self.keys_file.read_bytes())
            if ring.staged is None:
                safe_from = from_micros(ring.current.activated_us) + token_lifetime
                safe_from += ROTATION_LEEWAY
                if now < safe_from and ring.previous is not None and not force:
                    raise RotationTooSoon(
                        f"the previous key {ring.previous.kid} signed tokens that may be valid "
                        f"until {safe_from.isoformat(timespec='seconds')}; rotate after that, "
                        "or force it (their holders sign in again)"
                    )
                ring = KeyRing(current=ring.current, staged=new_signing_key(now))
            self._write(ring)
        return self.ring()

    def activate(self, now: datetime) -> KeyRing:
        """Step 2, once every gateway verifies with the JWKS `stage` published: the staged key
        signs from `now` on, the current one becomes previous. The JWKS does not change.
        Raises NothingStaged if no key is staged."""
        with self._locked():
            ring = KeyRing.from_json(self.keys_file.read_bytes())
            if ring.staged is None:
                raise NothingStaged(f"no staged key in {self.keys_file}: stage one first")
            activated = replace(ring.staged, activated_us=to_micros(now))
            self._write(KeyRing(current=activated, previous=ring.current))
        return self.ring()

    def rotate(self, now: datetime, token_lifetime: timedelta, *, force: bool = False) -> KeyRing:
        """`stage` and `activate` at once: a new current key, the current one as previous, the
        one before dropped. Only for a directory no running gateway reads (see the module
        docstring); raises RotationTooSoon as `stage` does."""
        self.stage(now, token_lifetime, force=force)
        return self.activate(now)

    def ring(self) -> KeyRing:
        """The ring on disk, read again only when the file was replaced since the last read."""
        status = self.keys_file.stat()
        identity = (status.st_ino, status.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != identity:
            self._loaded = (identity, KeyRing.from_json(self.keys_file.read_bytes()))
        return self._loaded[1]

    def _write(self, ring: KeyRing) -> None:
        """The JWKS first, the keys second (under the lock)."""
        self._publish(ring)
        write_atomically(self.keys_file, ring.to_json(), _PRIVATE_FILE)

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
    """`python -m services.users.keys rotate|stage|activate --keys-dir DIR [--force]`."""
    parser = argparse.ArgumentParser(prog="python -m services.users.keys")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("rotate", "make a new current signing key (stage and activate at once)"),
        ("stage", "publish a new key in jwks.json; the current one keeps signing"),
        ("activate", "sign with the staged key (once every gateway loaded jwks.json)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--keys-dir", type=Path, default=os.environ.get(KEYS_DIR_VARIABLE))
        if name != "activate":
            command.add_argument(
                "--force", action="store_true", help="even if live tokens lose their key"
            )
    arguments = parser.parse_args(argv)
    if arguments.keys_dir is None:
        parser.error(f"give --keys-dir or set {KEYS_DIR_VARIABLE}")
    directory = KeyDirectory(arguments.keys_dir)
    if not directory.keys_file.exists():
        parser.error(f"{directory.keys_file} does not exist: start users once to create it")
    now = utc_now()
    try:
        if arguments.command == "activate":
            ring = directory.activate(now)
        elif arguments.command == "stage":
            ring = directory.stage(now, ACCESS_TOKEN_LIFETIME, force=arguments.force)
        else:
            ring = directory.rotate(now, ACCESS_TOKEN_LIFETIME, force=arguments.force)
    except (RotationTooSoon, NothingStaged) as error:
        print(f"not {arguments.command}d: {error}", file=sys.stderr)
        return 1
    previous = ring.previous.kid if ring.previous else "none"
    staged = f", staged {ring.staged.kid}" if ring.staged else ""
    print(
        f"current key {ring.current.kid}, previous {previous}{staged}; "
        f"{directory.jwks_file} lists {len(ring.jwks()['keys'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
