"""What a store's `fn(connection)` is given, on either backend (services.common.database): a
connection that runs one SQL dialect, the subset SQLite and Postgres share, with `?`
placeholders, and returns rows readable by column name (or position).

On SQLite the connection is an `sqlite3.Connection` (rows are `sqlite3.Row`); on Postgres, a
thin adapter over a psycopg connection (services.common.postgres) that turns `?` into psycopg's
placeholders and gives rows the same by-name access. A store writes its statements once, in
this subset; only its migrations (DDL: types, identity columns) are written per backend.

The subset, as the stores use it: `?` placeholders; `INSERT ... ON CONFLICT (...) DO UPDATE
SET x = excluded.x` (never INSERT OR REPLACE / OR IGNORE); CASE instead of SQLite's scalar
MAX/MIN or Postgres' GREATEST/LEAST; row values compared with `<`; no parameter whose type only
its value could tell (`? IS NULL`: Postgres cannot infer it); no PRAGMA outside a SQLite
migration; nothing that ends the transaction (see services.common.database).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Row(Protocol):
    """One row: `row["column"]` or `row[0]` (sqlite3.Row, or the Postgres adapter's row)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


class Cursor(Protocol):
    """The result of one statement."""

    @property
    def rowcount(self) -> int:
        """Rows an INSERT, UPDATE or DELETE changed."""
        ...

    def fetchone(self) -> Any:
        """The next row (indexable by column name or position), or None."""
        ...

    def fetchall(self) -> list[Any]:
        """Every remaining row."""
        ...

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one at a time."""
        ...


class Connection(Protocol):
    """A database connection inside the transaction services.common.database began."""

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (a write's `fn` must leave it so)."""
        ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor:
        """Run one statement with `?` placeholders bound to `parameters`."""
        ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        """Run one statement once per parameter sequence."""
        ...
