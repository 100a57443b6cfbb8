"""Users' sign-in parts without a server: the backoff rule, source-address keys, the key
directory and its rotation (and its order in a running mesh), password validation and
hashing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import jwt
import pytest
from argon2 import PasswordHasher

from services.common.clock import to_micros
from services.common.errors import InvalidArgument
from services.users.domain import validate_new_user
from services.users.keys import KeyDirectory, NothingStaged, RotationTooSoon, main, thumbprint
from services.users.passwords import Passwords
from services.users.throttle import ThrottlePolicy, address_key
from services.users.tokens import ACCESS_TOKEN_LIFETIME, ALGORITHM, sign_access_token
from shopmesh.layout import StateDir
from shopmesh.local import signing
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = ThrottlePolicy(free_failures=3, max_delay=timedelta(seconds=10))


def test_failures_up_to_the_free_ones_cost_no_wait() -> None:
    assert POLICY.wait(2, NOW, NOW) == timedelta(0)


def test_each_failure_beyond_the_free_ones_doubles_the_wait_up_to_the_cap() -> None:
    waits = [POLICY.wait(failures, NOW, NOW).total_seconds() for failures in range(3, 9)]
    assert waits == [1, 2, 4, 8, 10, 10]


def test_the_wait_runs_from_the_last_failure() -> None:
    assert POLICY.wait(4, NOW, NOW + timedelta(seconds=1.5)) == timedelta(seconds=0.5)
    assert POLICY.wait(4, NOW, NOW + timedelta(seconds=3)) <= timedelta(0)


def test_failures_are_forgotten_after_a_quiet_period() -> None:
    assert POLICY.wait(1000, NOW, NOW + POLICY.forget_after) == timedelta(0)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" [2001:db8:1:2:3:4:5:6] ", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not an address", None),
        ("", None),
    ],
)
def test_address_keys_group_ipv6_by_its_64(address: str, key: str | None) -> None:
    assert address_key(address) == key


def test_a_new_key_directory_is_private_and_publishes_one_key(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path / "keys")
    ring = keys.ensure(NOW)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [keys.path, *keys.path.iterdir()]}
    assert modes == {
        "keys": "0o700",
        "signing-keys.json": "0o600",
        "jwks.json": "0o600",
        ".lock": "0o600",
    }
    published = json.loads(keys.jwks_file.read_text())["keys"]
    assert [key["kid"] for key in published] == [ring.current.kid]
    assert published[0]["kid"] == thumbprint(published[0])
    assert (published[0]["kty"], published[0]["crv"], published[0]["alg"]) == (
        "EC",
        "P-256",
        "ES256",
    )
    assert keys.ensure(NOW + timedelta(days=1)) == ring, "ensure replaced an existing key"


def test_a_deleted_jwks_file_is_written_again_on_start(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    keys.ensure(NOW)
    document = keys.jwks_file.read_text()
    keys.jwks_file.unlink()
    keys.ensure(NOW)
    assert keys.jwks_file.read_text() == document


def test_a_complete_read_only_directory_is_only_read(tmp_path: Path) -> None:
    # As a Kubernetes Secret is mounted: both files, no lock file, nothing writable.
    written = KeyDirectory(tmp_path / "written")
    ring = written.ensure(NOW)
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for file in (written.keys_file, written.jwks_file):
        (mounted / file.name).write_bytes(file.read_bytes())
        (mounted / file.name).chmod(0o400)
    mounted.chmod(0o500)
    try:
        assert KeyDirectory(mounted).ensure(NOW) == ring
        assert sorted(p.name for p in mounted.iterdir()) == ["jwks.json", "signing-keys.json"]
    finally:
        mounted.chmod(0o700)


def test_rotation_keeps_the_current_key_as_previous(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    first = keys.ensure(NOW).current
    token, _ = sign_access_token(first.private_key(), first.kid, "usr_1", NOW)
    rotated = keys.rotate(NOW, ACCESS_TOKEN_LIFETIME)
    assert rotated.previous == first
    assert rotated.current.kid != first.kid
    published = jwt.PyJWKSet.from_json(keys.jwks_file.read_text())
    assert [key.key_id for key in published.keys] == [rotated.current.kid, first.kid]
    claims = jwt.decode(
        token,
        published[first.kid],
        algorithms=[ALGORITHM],
        options={"verify_aud": False, "verify_exp": False},
    )
    assert claims["sub"] == "usr_1"


def test_rotating_again_before_the_dropped_keys_tokens_expire_is_refused(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    keys.ensure(NOW)
    ring = keys.rotate(NOW, ACCESS_TOKEN_LIFETIME)
    with pytest.raises(RotationTooSoon):
        keys.rotate(NOW + ACCESS_TOKEN_LIFETIME, ACCESS_TOKEN_LIFETIME)
    assert keys.ring() == ring
    later = keys.rotate(NOW + ACCESS_TOKEN_LIFETIME + timedelta(minutes=1), ACCESS_TOKEN_LIFETIME)
    assert later.previous == ring.current
    forced = keys.rotate(NOW, ACCESS_TOKEN_LIFETIME, force=True)
    assert forced.previous == later.current


def published_kids(keys: KeyDirectory) -> list[str]:
    return [key["kid"] for key in json.loads(keys.jwks_file.read_text())["keys"]]


def test_a_staged_key_is_published_before_it_signs(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    keys.ensure(NOW)
    rotated = keys.rotate(NOW, ACCESS_TOKEN_LIFETIME)
    users = KeyDirectory(tmp_path)  # what a running users process reads
    staged = keys.stage(NOW + timedelta(hours=1), ACCESS_TOKEN_LIFETIME)
    assert staged.staged is not None
    assert users.ring().current == rotated.current, "users signs with a key not yet published"
    # The gateway loads the new key beside the one that signs; the previous one, whose tokens
    # have expired, goes.
    assert published_kids(keys) == [staged.staged.kid, rotated.current.kid]
    assert staged.previous is None


def test_activation_signs_with_the_staged_key_and_leaves_the_jwks_as_it_was(
    tmp_path: Path,
) -> None:
    keys = KeyDirectory(tmp_path)
    first = keys.ensure(NOW).current
    staged = keys.stage(NOW, ACCESS_TOKEN_LIFETIME).staged
    assert staged is not None
    published = keys.jwks_file.read_bytes()
    later = NOW + timedelta(seconds=5)
    users = KeyDirectory(tmp_path)
    activated = keys.activate(later)
    assert users.ring() == activated
    assert (activated.current.kid, activated.previous, activated.staged) == (
        staged.kid,
        first,
        None,
    )
    assert activated.current.activated_us == to_micros(later)
    # What the gateway loaded at staging verifies every token from here on: no reload needed.
    assert keys.jwks_file.read_bytes() == published
    assert activated.jwks_json().encode() == published


def test_activating_without_a_staged_key_is_refused(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    ring = keys.ensure(NOW)
    with pytest.raises(NothingStaged):
        keys.activate(NOW)
    assert keys.ring() == ring


def test_staging_again_keeps_the_key_already_staged(tmp_path: Path) -> None:
    # A rotation that stopped before activation (the gateway did not come back) is taken up
    # again with the key the gateway may already have loaded, and is not "too soon".
    keys = KeyDirectory(tmp_path)
    keys.ensure(NOW)
    keys.rotate(NOW, ACCESS_TOKEN_LIFETIME)
    later = NOW + timedelta(hours=1)
    first = keys.stage(later, ACCESS_TOKEN_LIFETIME)
    assert keys.stage(later, ACCESS_TOKEN_LIFETIME) == first


def test_staging_too_soon_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    keys = KeyDirectory(tmp_path)
    keys.ensure(NOW)
    ring = keys.rotate(NOW, ACCESS_TOKEN_LIFETIME)
    published = keys.jwks_file.read_bytes()
    with pytest.raises(RotationTooSoon):
        keys.stage(NOW + ACCESS_TOKEN_LIFETIME, ACCESS_TOKEN_LIFETIME)
    assert (keys.ring(), keys.jwks_file.read_bytes()) == (ring, published)


def test_the_stage_and_activate_commands_rotate_in_two_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = KeyDirectory(tmp_path)
    first = keys.ensure(NOW).current
    assert main(["stage", "--keys-dir", str(tmp_path)]) == 0
    assert keys.ring().current == first
    assert main(["activate", "--keys-dir", str(tmp_path)]) == 0
    assert keys.ring().previous == first
    assert main(["activate", "--keys-dir", str(tmp_path)]) == 1
    assert "no staged key" in capsys.readouterr().err


class GatewayRestarts:
    """The part of a RunningMesh a key rotation uses: its state directory and restarting its
    gateway, which here records what users signs with and what the JWKS lists at that moment."""

    def __init__(self, root: Path, fails: bool = False) -> None:
        self.paths = StateDir(root)
        self.fails = fails
        self.seen: tuple[str, list[str]] | None = None

    async def restart_gateway(self, deadline: float) -> None:
        users = KeyDirectory(self.paths.signing_keys)
        self.seen = (users.ring().current.kid, published_kids(users))
        if self.fails:
            raise MeshError("the gateway did not become ready")


async def test_a_mesh_rotation_publishes_and_restarts_the_gateway_before_users_signs(
    tmp_path: Path,
) -> None:
    mesh = GatewayRestarts(tmp_path)
    old = signing.ensure_signing_keys(mesh.paths).current
    ring = await signing.rotate(cast(RunningMesh, mesh), force=True)
    # When the gateway (re)loads the JWKS, users still signs with the old key, and the JWKS
    # already lists the new one: no token the new gateway cannot verify, none the old refuses.
    assert mesh.seen == (old.kid, [ring.current.kid, old.kid])
    assert ring.previous == old
    assert KeyDirectory(mesh.paths.signing_keys).ring().current == ring.current


async def test_a_mesh_rotation_whose_gateway_fails_to_restart_keeps_signing_with_the_old_key(
    tmp_path: Path,
) -> None:
    mesh = GatewayRestarts(tmp_path, fails=True)
    old = signing.ensure_signing_keys(mesh.paths).current
    with pytest.raises(MeshError):
        await signing.rotate(cast(RunningMesh, mesh), force=True)
    ring = KeyDirectory(mesh.paths.signing_keys).ring()
    assert ring.current == old
    assert ring.staged is not None
    # Rotating again (the gateway back) finishes with the key already staged.
    mesh.fails = False
    assert (await signing.rotate(cast(RunningMesh, mesh))).current.kid == ring.staged.kid


def test_a_running_reader_sees_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    service = KeyDirectory(tmp_path)
    service.ensure(NOW)
    assert main(["rotate", "--keys-dir", str(tmp_path)]) == 0
    assert service.ring() == KeyDirectory(tmp_path).ring()
    assert service.ring().previous is not None


def test_the_rotate_command_refuses_a_directory_without_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rotate", "--keys-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "start users once" in capsys.readouterr().err


@pytest.mark.parametrize("password", ["short", "x" * 1025])
def test_a_password_out_of_bounds_is_a_violation(password: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_new_user("", "ada@example.com", "", password)
    assert [v.field for v in raised.value.violations] == ["password"]


def test_a_new_user_never_shows_its_password() -> None:
    new = validate_new_user("", "ada@example.com", "", "correct horse")
    assert "correct horse" not in repr(new)


async def test_a_password_matches_only_its_hash() -> None:
    passwords = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    try:
        hashed = await passwords.hash("correct horse")
        assert hashed.startswith("$argon2id$")
        assert "correct horse" not in hashed
        assert await passwords.verify(hashed, "correct horse")
        assert not await passwords.verify(hashed, "wrong horse")
        assert not await passwords.verify("not a hash", "correct horse")
        assert not await passwords.verify(None, "correct horse")
    finally:
        await passwords.close()


class CountingHasher(PasswordHasher):
    """Cheap Argon2id that counts the hashes it computes."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.hashes = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashes += 1
        return super().hash(password, salt=salt)


async def test_the_dummy_hash_is_made_at_start_not_by_the_first_unknown_email() -> None:
    hasher = CountingHasher()
    passwords = Passwords(hasher)
    try:
        await passwords.ready()
        assert hasher.hashes == 1
        # An unknown email (no hash to check) costs one check and no hash, the first as the rest.
        assert not await passwords.verify(None, "correct horse")
        assert not await passwords.verify(None, "correct horse")
        assert hasher.hashes == 1
    finally:
        await passwords.close()
