"""The Postgres engine of the store API (services.common.database): the same `read`/`write`
contract as on SQLite, on a database the service's own role owns.

- psycopg 3, sync connections from psycopg_pool pools, used on the Database's threads: a
  store's `fn(connection)` stays a plain function, unchanged. (An async driver would need every
  store's `fn` rewritten as a coroutine, for no gain: the event loop never waits on the
  database either way, and Postgres does the work.) A pool replaces a connection that broke
  (a server restart): the call that met the broken connection fails, the next one reconnects.
- Writes keep SQLite's group commit, on a writer pool of one connection: a batch is one
  `BEGIN ... COMMIT`, each write in its own savepoint. The transaction first takes a
  transaction-scoped advisory lock (WRITE_LOCK), so the writes of every process on the
  database (replicas) run one transaction at a time, as SQLite's write lock makes them: each
  store's read-check-write `fn` stays correct without row locks or retries. Replicas that must
  not do the same work twice coordinate on top of that: the orders saga by leases in its rows
  (services.orders.store), the outbox relay by a turn (services.common.turns).
- Reads run in `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`: one snapshot per `fn`, and a
  read that tries to write fails.
- Migrations run on their own connection holding a session advisory lock (MIGRATE_LOCK):
  replicas starting together wait for one another, and each migration runs once, in its own
  transaction with the version (the one row of table shopmesh_schema) read inside it.
- Statements are written with `?` placeholders (services.common.sql): the adapter turns them
  into psycopg's, and rows are readable by column name as sqlite3.Row's are.

The URL carries no password: the role's password is in a 0600 passfile it names
(`postgresql:///orders?host=/run/pg&user=orders&passfile=/state/orders.pgpass`), which libpq
refuses to read when anyone but its owner may; shopmesh.postgres writes both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg import pq

from services.common.database import Database, Migration, transaction
from services.common.sql import Connection
from services.common.turns import AdvisoryTurns

T = TypeVar("T")

# Advisory lock keys (bigint; advisory locks are per database, so one key serves them all).
WRITE_LOCK = 0x73686F706D657368  # "shopmesh"
MIGRATE_LOCK = WRITE_LOCK + 1
# How long opening waits for the pools' first connections before failing.
CONNECT_TIMEOUT_SECONDS = 10.0
_OPEN = (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR, pq.TransactionStatus.ACTIVE)


async def open_database(
    url: str, migrations: Sequence[Migration], *, readers: int, durable: bool
) -> Database:
    """Migrate the Postgres database at `url`, then open its pools (see Database.open)."""
    name = urlsplit(url).path.lstrip("/") or "postgres"
    write_thread = ThreadPoolExecutor(1, thread_name_prefix=f"db-write-{name}")
    read_threads = ThreadPoolExecutor(readers, thread_name_prefix=f"db-read-{name}")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(write_thread, _migrate, url, migrations)
        engine = await loop.run_in_executor(
            write_thread, functools.partial(PostgresEngine, url, readers=readers, durable=durable)
        )
    except BaseException:
        write_thread.shutdown(wait=True)
        read_threads.shutdown(wait=True)
        raise
    return Database(redacted(url), engine, write_thread, read_threads, AdvisoryTurns(url))


def redacted(url: str) -> str:
    """`url` without a password in it, should it carry one (for messages and Database.path)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresEngine:
    """The Engine (services.common.database) of one Postgres database: a writer pool of one
    connection and a reader pool of `readers`."""

    def __init__(self, url: str, *, readers: int, durable: bool) -> None:
        configure = None if durable else _not_durable
        self._writers = _pool(url, 1, configure, "writer")
        try:
            self._readers = _pool(url, readers, None, "reader")
        except BaseException:
            self._writers.close()
            raise

    @contextlib.contextmanager
    def writer(self) -> Iterator[Connection]:
        with self._writers.connection() as connection:
            yield PostgresConnection(connection)

    def begin_write(self, connection: Connection) -> None:
        connection.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    def read(self, query: Callable[[Connection], T]) -> T:
        with self._readers.connection() as raw:
            connection = PostgresConnection(raw)
            with transaction(connection, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
                return query(connection)

    def version(self) -> int:
        return self.read(_version)

    def close(self) -> None:
        self._writers.close()
        self._readers.close()


def _pool(
    url: str,
    size: int,
    configure: Callable[[psycopg.Connection[Any]], None] | None,
    role: str,
) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
    pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
        url,
        min_size=size,
        max_size=size,
        # Transactions are explicit (BEGIN ... COMMIT), as on SQLite.
        kwargs={"autocommit": True, "row_factory": rows},
        configure=configure,
        name=role,
        num_workers=1,
        open=False,
    )
    pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
    return pool


def _not_durable(connection: psycopg.Connection[Any]) -> None:
    # A COMMIT returns before its WAL reaches the disk: a crash of the server may lose the last
    # ones, never corrupt the database (Database.open's durable=False).
    connection.execute("SET synchronous_commit = off")


class PostgresConnection:
    """A psycopg connection as a store's `fn` sees it (services.common.sql.Connection)."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    @property
    def in_transaction(self) -> bool:
        return self._connection.info.transaction_status in _OPEN

    def execute(self, sql: str, parameters: Sequence[Any] | None = None, /) -> psycopg.Cursor[Any]:
        if parameters is None:
            cursor = self._connection.execute(sql)
        else:
            cursor = self._connection.execute(placeholders(sql), parameters)
        if sql.strip().upper() == "COMMIT" and cursor.statusmessage != "COMMIT":
            # Postgres answers COMMIT of a failed transaction with a ROLLBACK, not an error;
            # SQLite raises, and so does this, so no write is acknowledged that was not kept.
            raise psycopg.errors.InFailedSqlTransaction("the transaction was rolled back")
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cursor = self._connection.cursor()
        cursor.executemany(placeholders(sql), list(parameters))
        return cursor


class Row:
    """A row readable by column name or position, like sqlite3.Row."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Sequence[Any], names: Mapping[str, int]) -> None:
        self._values = values
        self._names = names

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._names[key] if isinstance(key, str) else key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def rows(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], Row]:
    """psycopg row factory: Row objects sharing their cursor's column-name index."""
    names = {column.name: index for index, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


@functools.lru_cache(maxsize=1024)
def placeholders(sql: str) -> str:
    """`sql` with SQLite's `?` placeholders as psycopg's `%s` (and a literal `%` as `%%`),
    leaving string literals, quoted identifiers and comments as they are."""
    out: list[str] = []
    index = 0
    while index < len(sql):
        char = sql[index]
        if char in "'\"":
            end = sql.find(char, index + 1)
            end = len(sql) if end < 0 else end + 1
            out.append(sql[index:end].replace("%", "%%"))
            index = end
            continue
        if sql.startswith("--", index):
            end = sql.find("\n", index)
            end = len(sql) if end < 0 else end
            out.append(sql[index:end].replace("%", "%%"))
            index = end
            continue
        out.append("%s" if char == "?" else "%%" if char == "%" else char)
        index += 1
    return "".join(out)


def _version(db: Connection) -> int:
    row = db.execute("SELECT version FROM shopmesh_schema").fetchone()
    return int(row["version"])


def _migrate(url: str, migrations: Sequence[Migration]) -> None:
    """Apply the pending migrations under MIGRATE_LOCK, one transaction each."""
    with psycopg.connect(url, autocommit=True, row_factory=rows) as raw:
        db = PostgresConnection(raw)
        # Held until this connection closes: a replica starting beside this one waits here,
        # then finds the migrations done.
        db.execute(f"SELECT pg_advisory_lock({MIGRATE_LOCK})")
        with transaction(db, "BEGIN"):
            db.execute(
                "CREATE TABLE IF NOT EXISTS shopmesh_schema ("
                " one_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one_row),"
                " version INTEGER NOT NULL)"
            )
            db.execute("INSERT INTO shopmesh_schema (version) VALUES (0) ON CONFLICT DO NOTHING")
        while True:
            with transaction(db, "BEGIN"):
                version = _version(db)
                if version > len(migrations):
                    raise RuntimeError(
                        f"{redacted(url)} has schema version {version}, newer than this code "
                        f"knows ({len(migrations)})"
                    )
                if version == len(migrations):
                    return
                migration = migrations[version]
                if callable(migration):
                    migration(db)
                else:
                    db.execute(migration)
                db.execute("UPDATE shopmesh_schema SET version = ?", (version + 1,))
