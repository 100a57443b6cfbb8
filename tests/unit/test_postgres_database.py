"""The store API on Postgres (services.common.postgres) against a real Postgres 15: the same
read/write contract as on SQLite, migrations once under the advisory lock, every store at the
same schema version on both backends, and a database per service that no other service's role
can enter or read."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest

from services.common.database import Database, Migrations
from services.common.postgres import placeholders
from services.common.sql import Connection
from services.inventory import store as inventory_store
from services.notifications import store as notifications_store
from services.orders import schema as orders_schema
from services.payments import store as payments_store
from services.users import store as users_store
from shopmesh.local import postgres
from tests.support.databases import (
    count_rows,
    open_together,
    query,
    queued_together,
    schema_version,
)

pytestmark = pytest.mark.postgres

RUNS = "CREATE TABLE IF NOT EXISTS runs (version INTEGER NOT NULL);"
MIGRATIONS = Migrations(
    sqlite=["CREATE TABLE cups (name TEXT PRIMARY KEY);", "ALTER TABLE cups ADD note TEXT;"],
    postgres=[
        f"{RUNS} INSERT INTO runs VALUES (1); CREATE TABLE cups (name TEXT PRIMARY KEY);",
        "INSERT INTO runs VALUES (2); ALTER TABLE cups ADD note TEXT;",
    ],
)
STORES = {
    "users": users_store.MIGRATIONS,
    "inventory": inventory_store.MIGRATIONS,
    "orders": orders_schema.MIGRATIONS,
    "payments": payments_store.migrations(b"k" * 32),
    "notifications": notifications_store.MIGRATIONS,
}


@pytest.fixture
async def database(postgres_database: str) -> AsyncIterator[Database]:
    opened = await Database.open(postgres_database, MIGRATIONS)
    yield opened
    await opened.close()


def _insert(name: str) -> Callable[[Connection], None]:
    def insert(db: Connection) -> None:
        db.execute("INSERT INTO cups (name) VALUES (?)", (name,))

    return insert


def _count(db: Connection) -> int:
    return int(db.execute("SELECT COUNT(*) FROM cups").fetchone()[0])


def test_placeholders_become_psycopg_ones_outside_literals_and_comments() -> None:
    assert placeholders("SELECT ?, '?%', \"a?\" -- why? 5%\nWHERE x % 2 = ?") == (
        "SELECT %s, '?%%', \"a?\" -- why? 5%%\nWHERE x %% 2 = %s"
    )


async def test_a_write_commits_and_a_raising_one_is_rolled_back(database: Database) -> None:
    await database.write(_insert("mug"))

    def insert_then_fail(db: Connection) -> None:
        _insert("cup")(db)
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await database.write(insert_then_fail)
    assert await database.read(_count) == 1
    assert count_rows(database.path, "SELECT COUNT(*) FROM cups WHERE name = ?", ("mug",)) == 1


async def test_a_violated_constraint_fails_its_write_alone_and_the_batch_commits(
    database: Database,
) -> None:
    await database.write(_insert("mug"))

    before = database.write_stats
    # Queued behind a held write, so the three share one batch: the violation must roll back
    # to its savepoint inside the batch's transaction, and the batch still commit.
    outcomes = await queued_together(database, [_insert("cup"), _insert("mug"), _insert("bowl")])
    after = database.write_stats
    # The held write and the batch: two commits; the hold, cup and bowl acknowledged.
    assert (after.commits - before.commits, after.changes - before.changes) == (2, 3)

    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], psycopg.errors.UniqueViolation)
    assert sorted(
        await database.read(
            lambda db: [r["name"] for r in db.execute("SELECT name FROM cups").fetchall()]
        )
    ) == ["bowl", "cup", "mug"]


async def test_a_read_sees_one_snapshot_and_cannot_write(database: Database) -> None:
    def count_twice(db: Connection) -> tuple[int, int]:
        first = _count(db)
        query(database.path, "INSERT INTO cups (name) VALUES (?)", ("sneaky",))
        return first, _count(db)

    assert await database.read(count_twice) == (0, 0)
    assert await database.read(_count) == 1
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        await database.read(_insert("mug"))


async def test_a_write_that_ends_its_transaction_itself_is_refused(database: Database) -> None:
    def commit_early(db: Connection) -> None:
        db.execute("COMMIT")

    with pytest.raises(RuntimeError, match="ended its transaction"):
        await database.write(commit_early)
    await database.write(_insert("mug"))
    assert await database.read(_count) == 1


async def test_writes_of_two_processes_on_one_database_all_commit(
    postgres_database: str, database: Database
) -> None:
    other = await Database.open(postgres_database, MIGRATIONS)
    try:
        await asyncio.gather(
            *((database if n % 2 else other).write(_insert(f"cup-{n}")) for n in range(20))
        )
    finally:
        await other.close()
    assert await database.read(_count) == 20


def test_databases_opened_together_migrate_once(postgres_database: str) -> None:
    assert open_together(postgres_database, MIGRATIONS, openers=4) == []

    assert query(postgres_database, "SELECT version FROM runs ORDER BY version") == [(1,), (2,)]
    assert query(postgres_database, "SELECT version FROM shopmesh_schema") == [(2,)]


async def test_a_database_from_newer_code_is_refused(postgres_database: str) -> None:
    await (await Database.open(postgres_database, MIGRATIONS)).close()
    older = Migrations(sqlite=MIGRATIONS.sqlite[:1], postgres=MIGRATIONS.postgres[:1])

    with pytest.raises(RuntimeError, match="schema version 2, newer than this code knows"):
        await Database.open(postgres_database, older)


@pytest.mark.parametrize("service", STORES)
async def test_every_store_reaches_the_same_version_on_both_backends(
    service: str, postgres_database: str, tmp_path: Path
) -> None:
    migrations = STORES[service]
    versions = []
    for location in (tmp_path / f"{service}.db", postgres_database):
        database = await Database.open(location, migrations)
        versions.append(await database.version())
        await database.close()

    assert versions == [len(migrations)] * 2


def test_a_service_role_can_neither_enter_nor_read_another_services_database(
    postgres_cluster: postgres.Cluster,
) -> None:
    orders = postgres.create_service_database(postgres_cluster, "iso_orders")
    payments = postgres.create_service_database(postgres_cluster, "iso_payments")
    try:
        query(payments, "CREATE TABLE cards (number TEXT)")
        query(payments, "INSERT INTO cards VALUES ('4242')")
        as_orders_in_payments = postgres_cluster.url("iso_payments", "iso_orders")

        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(as_orders_in_payments).close()
        # Even let in (CONNECT granted by mistake), the role may not touch the tables.
        query(
            postgres.admin_url(postgres_cluster),
            "GRANT CONNECT ON DATABASE iso_payments TO iso_orders",
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema public"):
            query(as_orders_in_payments, "SELECT number FROM public.cards")
        assert count_rows(orders, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        # Payments first: the CONNECT granted on it depends on the orders role.
        postgres.drop_service_database(postgres_cluster, "iso_payments")
        postgres.drop_service_database(postgres_cluster, "iso_orders")


def test_each_role_has_a_private_passfile_and_its_url_no_password(
    postgres_cluster: postgres.Cluster, postgres_database: str
) -> None:
    role = postgres_database.split("user=")[1].split("&")[0]
    passfile = postgres_cluster.passfile(role)

    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(postgres_cluster.secrets.stat().st_mode) == 0o700
    assert passfile.read_text().split(":")[-1].strip() not in postgres_database
    verifier = query(
        postgres.admin_url(postgres_cluster),
        "SELECT rolpassword FROM pg_authid WHERE rolname = ?",
        (role,),
    )[0][0]
    assert str(verifier).startswith("SCRAM-SHA-256$")


async def test_payments_of_version_1_keep_cards_instead_of_tokens_on_postgres(
    postgres_database: str,
) -> None:
    key = b"k" * 32
    version_1 = Migrations(
        sqlite=[payments_store.SCHEMA_V1], postgres=[payments_store.POSTGRES_SCHEMA_V1]
    )
    previous = await Database.open(postgres_database, version_1)

    def v1_rows(db: Connection) -> None:
        db.execute("INSERT INTO payments VALUES ('pay_1', 'ord_a', 'USD', 1299, 'CAPTURED', 0, 0)")
        db.execute(
            "INSERT INTO charge_attempts (idempotency_key, order_id, currency_code, minor_units,"
            " payment_token, payment_id, create_time_us) VALUES (?, ?, 'USD', 1299, ?, ?, 0)",
            ("key-a", "ord_a", "tok_visa", "pay_1"),
        )

    await previous.write(v1_rows)
    await previous.close()
    holding = "SELECT COUNT(*) FROM charge_attempts c WHERE CAST(c AS TEXT) LIKE '%tok_%'"
    assert count_rows(postgres_database, holding) == 1

    store = await payments_store.SqlPaymentStore.open(postgres_database, key)
    await store.close()

    assert query(postgres_database, "SELECT card_brand, card_last4 FROM charge_attempts") == [
        ("visa", "4242")
    ]
    holding = "SELECT COUNT(*) FROM charge_attempts c WHERE CAST(c AS TEXT) LIKE '%tok_%'"
    assert count_rows(postgres_database, holding) == 0
    assert schema_version(postgres_database) == 3
