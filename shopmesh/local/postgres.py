"""A local Postgres cluster from Debian's `postgresql` package, and a database per service in
it: what the tests' fixture starts once per session, and `shopmesh up --db postgres` runs
under the state directory (`make down` stops it and keeps its data).

- The cluster lives under one directory (`root`): `data/` (initdb's), `run/` (its Unix socket:
  `listen_addresses=''`, no TCP port at all, so it never meets the package's own `main`
  cluster on 5432), `postgres.log`, and `secrets/` (0700: each role's passfile, 0600).
- Postgres refuses to run as root: as root, every Postgres program runs as the package's
  `postgres` user (`runuser -u postgres --`), which must reach `root` (checked up front);
  otherwise as the current user.
- Every role logs in with a SCRAM-SHA-256 password (pg_hba: `local all all scram-sha-256`);
  the verifier is computed here (libpq's PQencryptPasswordConn), so the server never sees the
  password itself. Each service gets its own role and private database, made by the
  statements of shopmesh/database_roles.py (which the Kubernetes database pods run too).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from shopmesh import database_roles

# Debian's versioned bin directory: initdb and pg_ctl are not on PATH.
BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN = "postgres"
# The socket's name, <run>/.s.PGSQL.<port>: with no TCP listener the port only names it.
PORT = 5432
# sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107
START_TIMEOUT_SECONDS = 30


class ClusterError(RuntimeError):
    """The cluster cannot be created or started here; the message says why, in one line."""


@dataclass(frozen=True)
class Cluster:
    """Where one local cluster keeps everything (see module docstring)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def passfile(self, role: str) -> Path:
        """`role`'s passfile (libpq's format), 0600."""
        return self.secrets / f"{role}.pgpass"

    def url(self, database: str, role: str) -> str:
        """A URL for `role` on `database` over the cluster's socket, its password in its
        passfile (never in the URL)."""
        query = (
            f"host={quote(str(self.socket_dir), safe='/')}&port={PORT}&user={quote(role)}"
            f"&passfile={quote(str(self.passfile(role)), safe='/')}"
        )
        return f"postgresql:///{quote(database)}?{query}"


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_postgres(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines()
        raise ClusterError(f"{Path(command[0]).name} failed: {output[-1] if output else done}")


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def check_place(root: Path) -> None:
    """Refuse, in one line, a `root` the cluster cannot live under: one the postgres user
    cannot reach, or whose socket path would be too long."""
    if not BIN.joinpath("initdb").exists():
        raise ClusterError(f"{BIN}/initdb not found: install Debian's postgresql package")
    socket = root.resolve() / "run" / f".s.PGSQL.{PORT}"
    if len(str(socket).encode()) > MAX_SOCKET_PATH:
        raise ClusterError(
            f"{socket} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter directory"
        )
    if os.geteuid() == 0:
        # Each directory above root must let the postgres user through (root's 0700 home,
        # pytest's 0700 temporary base and a 0700 state directory do not).
        reach = subprocess.run(_as_postgres(["test", "-x", str(root.resolve().parent)]))
        if reach.returncode != 0:
            raise ClusterError(
                f"the postgres user cannot reach {root.resolve().parent}: choose a directory "
                "every parent of which it may search (o+x), e.g. under /tmp or /var/lib"
            )


def init(root: Path) -> Cluster:
    """Create the cluster under `root` (a new or empty directory) with an admin role whose
    password is in the admin passfile; or return the one already there."""
    cluster = Cluster(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_place(root)
    if cluster.data.joinpath("PG_VERSION").exists():
        return cluster
    cluster.secrets.mkdir(mode=0o700, exist_ok=True)
    for directory in (cluster.data, cluster.socket_dir):
        directory.mkdir(mode=0o700, exist_ok=True)
        _give_to_postgres(directory)
    _give_to_postgres(root)
    password = secrets.token_urlsafe(32)
    _write_passfile(cluster, ADMIN, password)
    # initdb reads the password from a file the postgres user can read: one of its own, gone
    # once initdb has returned.
    pwfile = cluster.root / "initdb.pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _give_to_postgres(pwfile)
    try:
        _run(
            [
                str(BIN / "initdb"),
                f"--pgdata={cluster.data}",
                f"--username={ADMIN}",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                # Test and local data: no fsync at initdb (the server itself fsyncs as usual).
                "--no-sync",
            ]
        )
    finally:
        pwfile.unlink(missing_ok=True)
    return cluster


def running(cluster: Cluster) -> bool:
    """Whether the cluster's server runs (pg_ctl status)."""
    if not cluster.data.joinpath("postmaster.pid").exists():
        return False
    status = [str(BIN / "pg_ctl"), f"--pgdata={cluster.data}", "status"]
    return subprocess.run(_as_postgres(status), capture_output=True, check=False).returncode == 0


def start(cluster: Cluster, *, durable: bool = True, settings: Sequence[str] = ()) -> None:
    """Start the cluster (sockets only) and wait until it accepts connections; a cluster
    already running (left by a mesh that died) is used as it is. `durable=False` is for a
    throwaway cluster (the tests'): no fsync at all, so creating a database per test is cheap,
    and a crash of the machine may corrupt it. `settings`: more command-line settings
    (`-c`, `name=value`, ...), after these, so that one of them wins."""
    if running(cluster):
        return
    options = (
        f"-c listen_addresses='' -c port={PORT} -c unix_socket_directories='{cluster.socket_dir}'"
        " -c unix_socket_permissions=0700"
    )
    if not durable:
        options += " -c fsync=off -c full_page_writes=off"
    # pg_ctl hands the options to a shell.
    options = " ".join([options, *map(shlex.quote, settings)])
    if not cluster.log.exists():
        cluster.log.touch(mode=0o600)
        _give_to_postgres(cluster.log)
    _run(
        [
            str(BIN / "pg_ctl"),
            f"--pgdata={cluster.data}",
            f"--log={cluster.log}",
            f"--options={options}",
            f"--timeout={START_TIMEOUT_SECONDS}",
            "--wait",
            "--silent",
            "start",
        ]
    )


def stop(cluster: Cluster) -> None:
    """Stop the cluster (fast: open sessions are ended), keeping its data."""
    if not running(cluster):
        return
    _run(
        [
            str(BIN / "pg_ctl"),
            f"--pgdata={cluster.data}",
            "--mode=fast",
            f"--timeout={START_TIMEOUT_SECONDS}",
            "--wait",
            "--silent",
            "stop",
        ]
    )


def drop_service_database(cluster: Cluster, name: str) -> None:
    """Drop database `name` (ending its sessions) and role `name`, and forget its password."""
    with psycopg.connect(admin_url(cluster), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    cluster.passfile(name).unlink(missing_ok=True)


def admin_url(cluster: Cluster, database: str = "postgres") -> str:
    """The admin role's URL (the superuser initdb created)."""
    return cluster.url(database, ADMIN)


def create_service_database(cluster: Cluster, name: str) -> str:
    """Create role `name` (SCRAM password in its passfile) and database `name` owned by it,
    private to it; return its URL. Idempotent: an existing role and database are kept (and
    made private again)."""
    with psycopg.connect(admin_url(cluster), autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        if exists is None or not cluster.passfile(name).exists():
            # The passfile is written once the role has the password: if the ALTER fails or
            # the process dies first, the next start finds no passfile and sets one again.
            password = secrets.token_urlsafe(32)
            verifier = admin.pgconn.encrypt_password(
                password.encode(), name.encode(), b"scram-sha-256"
            ).decode()
            admin.execute(
                database_roles.login_role(name, sql.Literal(verifier), exists=bool(exists))
            )
            _write_passfile(cluster, name, password)
        if (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            is None
        ):
            admin.execute(database_roles.create_database(name))
        admin.execute(database_roles.private_database(name))
    with psycopg.connect(admin_url(cluster, name), autocommit=True) as owner_db:
        for statement in database_roles.private_schema(name):
            owner_db.execute(statement)
    return cluster.url(name, name)


def _write_passfile(cluster: Cluster, role: str, password: str) -> None:
    """`role`'s password in its passfile (0600 from its creation), replaced whole: written
    beside it, then renamed over it."""
    path = cluster.passfile(role)
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        # host:port:database:user:password; the host of a socket connection is its directory.
        file.write(f"*:*:*:{role}:{password}\n")
    os.replace(partial, path)


def serve_services(root: Path, services: Iterable[str]) -> dict[str, str]:
    """The mesh's cluster under `root`, created if new and started if stopped, with a role and
    database per service in `services`; service -> its URL."""
    cluster = init(root)
    start(cluster)
    return {service: create_service_database(cluster, service) for service in services}
