"""A service's own role and private database on Postgres, as SQL: the one place that says what
"database per service" means, run by two callers.

- the local cluster (shopmesh/local/postgres.py) runs these statements with psycopg, giving
  the role a SCRAM verifier computed on the client;
- the Kubernetes database pods (shopmesh/k8s/postgres.py) run them as a psql script from the
  postgres image's initdb hook, the password read from a Secret-fed variable (`init_script`).

What they make: role `name` (LOGIN, a SCRAM-SHA-256 password) owning database `name` (C
collation, so text sorts as on SQLite); CONNECT and TEMPORARY revoked from PUBLIC on that
database and every privilege on its public schema, so no other role (another service's) may
connect to it, nor use its tables were it let in.
"""

from __future__ import annotations

from psycopg import sql

PASSWORD_VARIABLE = "password"
"""The psql variable `init_script` reads the role's password into."""


def login_role(name: str, password: sql.Composable, *, exists: bool = False) -> sql.Composed:
    """CREATE (or, for a role that `exists`, ALTER) role `name` with `password`: a literal
    SCRAM verifier (locally) or a psql variable (Kubernetes)."""
    verb = sql.SQL("ALTER" if exists else "CREATE")
    return sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, sql.Identifier(name), password)


def create_database(name: str) -> sql.Composed:
    """Database `name`, owned by role `name`."""
    return sql.SQL(
        "CREATE DATABASE {} OWNER {} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'"
    ).format(sql.Identifier(name), sql.Identifier(name))


def private_database(name: str) -> sql.Composed:
    """Run on any database of the cluster: only `name`'s owner (and superusers) may connect."""
    return sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))


def private_schema(name: str) -> list[sql.SQL | sql.Composed]:
    """Run on database `name` itself: its public schema belongs to role `name` alone."""
    return [
        sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"),
        sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(name)),
    ]


def init_script(name: str, password_env: str) -> str:
    """A psql script (psql 15: `\\getenv`) that makes `name`'s role and private database on a
    new cluster, the password taken from environment variable `password_env`. The password
    reaches the server as a literal of CREATE ROLE, which hashes it with SCRAM-SHA-256
    (`password_encryption`); it is in no file and no manifest. An unset variable leaves
    `:'password'` unexpanded, a syntax error that stops the script (ON_ERROR_STOP)."""
    password = sql.SQL(f":'{PASSWORD_VARIABLE}'")
    statements: list[sql.SQL | sql.Composed] = [
        sql.SQL("SET password_encryption = 'scram-sha-256'"),
        login_role(name, password),
        create_database(name),
        private_database(name),
    ]
    lines = [
        "\\set ON_ERROR_STOP on",
        f"\\getenv {PASSWORD_VARIABLE} {password_env}",
        *(f"{statement.as_string()};" for statement in statements),
        f"\\connect {sql.Identifier(name).as_string()}",
        *(f"{statement.as_string()};" for statement in private_schema(name)),
    ]
    return "\n".join(lines) + "\n"
