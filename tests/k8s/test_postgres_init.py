"""The database pods' init step on a real Postgres 15: the psql script the postgres component
ships to /docker-entrypoint-initdb.d, run as the official image's entrypoint runs it (psql,
ON_ERROR_STOP, the password in the environment as the Secret puts it), makes a role that logs
in with SCRAM to its own database and to no other one's. Starts Postgres: run it under the
shared test lock."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shopmesh.database_roles import init_script
from shopmesh.k8s.postgres import ROLE_PASSWORD_ENV
from shopmesh.local import postgres

pytestmark = pytest.mark.postgres

PSQL = postgres.BIN / "psql"
# Hyphenated, as a service's name may be: every identifier must be quoted.
SERVICES = ("init-orders", "init-gift-cards")


def run_init(
    cluster: postgres.Cluster, tmp_path: Path, name: str, password: str | None
) -> subprocess.CompletedProcess[str]:
    """`init_script(name)` as the image's entrypoint runs each *.sql file of the directory."""
    script = tmp_path / f"{name}.sql"
    script.write_text(init_script(name, ROLE_PASSWORD_ENV))
    env = {k: v for k, v in os.environ.items() if k != ROLE_PASSWORD_ENV}
    if password is not None:
        env[ROLE_PASSWORD_ENV] = password
    command = [str(PSQL), "-v", "ON_ERROR_STOP=1", "--no-password", "--no-psqlrc"]
    return subprocess.run(
        [*command, "--dbname", postgres.admin_url(cluster), "-f", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def connect(
    cluster: postgres.Cluster, database: str, role: str, password: str
) -> psycopg.Connection:
    return psycopg.connect(
        host=str(cluster.socket_dir),
        port=postgres.PORT,
        dbname=database,
        user=role,
        password=password,
        connect_timeout=10,
    )


def admin_value(cluster: postgres.Cluster, statement: str, *parameters: object) -> object:
    with psycopg.connect(postgres.admin_url(cluster)) as admin:
        row = admin.execute(statement, parameters).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def initialized(postgres_cluster: postgres.Cluster, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Every name of SERVICES made by the init script: name -> its role's password."""
    passwords = {name: secrets.token_urlsafe(32) for name in SERVICES}
    try:
        for name, password in passwords.items():
            done = run_init(postgres_cluster, tmp_path, name, password)
            assert done.returncode == 0, done.stderr
        yield passwords
    finally:
        for name in SERVICES:
            postgres.drop_service_database(postgres_cluster, name)


def test_the_role_logs_in_with_scram_to_its_own_database(
    postgres_cluster: postgres.Cluster, initialized: dict[str, str]
) -> None:
    for name, password in initialized.items():
        with connect(postgres_cluster, name, name, password) as connection:
            row = connection.execute("SELECT current_user, current_database()").fetchone()
        assert row == (name, name)
        verifier = admin_value(
            postgres_cluster, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", name
        )
        assert str(verifier).startswith("SCRAM-SHA-256$")
        owner = admin_value(
            postgres_cluster,
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
            name,
        )
        assert owner == name


def test_no_other_role_may_connect_to_a_services_database(
    postgres_cluster: postgres.Cluster, initialized: dict[str, str]
) -> None:
    orders, gift_cards = SERVICES
    for name in SERVICES:
        public = admin_value(
            postgres_cluster, "SELECT has_database_privilege('public', %s, 'CONNECT')", name
        )
        assert public is False
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(postgres_cluster, gift_cards, orders, initialized[orders]).close()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(postgres_cluster, orders, gift_cards, initialized[gift_cards]).close()


def test_the_script_stops_when_the_secret_gave_no_password(
    postgres_cluster: postgres.Cluster, tmp_path: Path
) -> None:
    name = "init-no-password"
    try:
        done = run_init(postgres_cluster, tmp_path, name, None)
        assert done.returncode != 0
        assert "syntax error" in done.stderr
        exists = admin_value(
            postgres_cluster, "SELECT count(*) FROM pg_roles WHERE rolname = %s", name
        )
        assert exists == 0
    finally:
        postgres.drop_service_database(postgres_cluster, name)
