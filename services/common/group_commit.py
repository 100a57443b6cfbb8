"""Group commit: the one writer of a Database runs every write queued behind its previous batch
(at most MAX_BATCH) in one transaction, each in its own savepoint, and acknowledges them only
after that COMMIT (the contract is in services.common.database's docstring)."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from services.common.sql import Connection

T = TypeVar("T")

# The most writes one COMMIT takes. Bounded so a batch holds the write lock (which another
# process on the file, e.g. inventory's second replica, waits for) a bounded time, and one
# failed COMMIT fails a bounded number of writes.
MAX_BATCH = 64


class Writer(Protocol):
    """What group commit needs of a backend (services.common.database.Engine has it)."""

    def writer(self) -> contextlib.AbstractContextManager[Connection]: ...

    def begin_write(self, connection: Connection) -> None: ...


@dataclass(frozen=True)
class WriteStats:
    """What a Database's writer has committed since it was opened (migrations aside)."""

    commits: int
    """COMMITs that succeeded: one per batch of writes."""
    changes: int
    """Writes acknowledged by those COMMITs (a batch's writes that raised are not counted)."""


@dataclass(eq=False)
class _Write:
    """One `write()` call: its change, what the change returned (kept until the COMMIT), and
    the future its caller waits on."""

    change: Callable[[Connection], Any]
    done: Future[Any] = field(default_factory=Future)
    result: Any = None


class GroupCommit:
    """The writer's queue of writes, committed in batches on the writer thread."""

    # One name for every change's savepoint: each is released before the next one starts.
    _SAVEPOINT = "shopmesh_write"

    def __init__(self, engine: Writer, thread: ThreadPoolExecutor) -> None:
        self._engine = engine
        self._thread = thread
        # Guards the queue, the flag and the stats: writes are queued on the event loop and
        # taken on the writer thread.
        self._lock = threading.Lock()
        self._queue: deque[_Write] = deque()
        self._draining = False
        self._stats = WriteStats(commits=0, changes=0)

    def submit(self, change: Callable[[Connection], T]) -> Future[T]:
        """Queue `change`; the future gets its result once its batch has committed."""
        write = _Write(change)
        # Running from the start, as write() promises: its future can no longer be cancelled.
        write.done.set_running_or_notify_cancel()
        with self._lock:
            self._queue.append(write)
            idle = not self._draining
            self._draining = True
        # One drain at a time; a write queued while it runs waits for it and joins the next
        # batch. (After close() nothing submits: the executor would refuse.)
        if idle:
            self._thread.submit(self._drain)
        return write.done

    def stats(self) -> WriteStats:
        with self._lock:
            return self._stats

    def _drain(self) -> None:
        """Commit batches until the queue is empty (on the writer thread)."""
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                if not batch:
                    self._draining = False
                    return
            try:
                with self._engine.writer() as connection:
                    self._commit(connection, batch)
            except BaseException as error:
                # _commit settles its batch itself; this is the backstop for a bug in it, so
                # that no caller waits forever and the writer goes on with the next batch.
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(error)

    def _commit(self, connection: Connection, batch: Sequence[_Write]) -> None:
        """Run `batch` in one transaction and settle every write of it that ran: a change that
        raised gets its exception; the others their results once COMMIT has returned, or the
        error that ended the transaction."""
        try:
            self._engine.begin_write(connection)
        except BaseException as error:
            # A begin can fail half way (Postgres: BEGIN ran, its write lock did not): end
            # what it opened, so the connection carries no aborted transaction on.
            failure = _roll_back(connection, error)
            for write in batch:
                write.done.set_exception(failure)
            return
        waiting = deque(batch)
        ran: list[_Write] = []
        try:
            while waiting:
                ran.append(write := waiting.popleft())
                self._run_change(connection, write)
            connection.execute("COMMIT")
        except BaseException as error:
            failure = _roll_back(connection, error)
            for write in ran:
                if not write.done.done():
                    write.done.set_exception(failure)
            # The writes that never ran lose nothing: they go first into the next batch. At
            # least one write of this batch ran, so every batch settles at least one.
            self._requeue(waiting)
            return
        returned = [write for write in ran if not write.done.done()]
        with self._lock:
            self._stats = WriteStats(
                commits=self._stats.commits + 1, changes=self._stats.changes + len(returned)
            )
        for write in returned:
            write.done.set_result(write.result)

    def _run_change(self, connection: Connection, write: _Write) -> None:
        """Run one change in its own savepoint: kept for the COMMIT if it returns; rolled back
        to the savepoint, its exception given to its caller, if it raises. Raises when the
        transaction itself did not survive the change."""
        connection.execute(f"SAVEPOINT {self._SAVEPOINT}")
        try:
            write.result = write.change(connection)
        except BaseException as error:
            if not connection.in_transaction:
                # SQLite rolled the whole transaction back (RAISE(ROLLBACK), a full disk):
                # the batch fails with the change's error.
                raise
            connection.execute(f"ROLLBACK TO {self._SAVEPOINT}")
            connection.execute(f"RELEASE {self._SAVEPOINT}")
            write.done.set_exception(error)
            return
        if not connection.in_transaction:
            raise RuntimeError(
                "a write ended its transaction itself: a change must not run BEGIN, COMMIT, "
                "END, ROLLBACK, SAVEPOINT or RELEASE (see services.common.database)"
            )
        connection.execute(f"RELEASE {self._SAVEPOINT}")

    def _requeue(self, writes: Iterable[_Write]) -> None:
        with self._lock:
            self._queue.extendleft(reversed(list(writes)))


def _roll_back(connection: Connection, error: BaseException) -> BaseException:
    """ROLLBACK what is left of a failed transaction. Returns the error to report: `error`, or
    ROLLBACK's own (its context is `error`) if that fails too, so the writer thread carries on
    to the next batch either way."""
    if not connection.in_transaction:
        return error
    try:
        connection.execute("ROLLBACK")
    except BaseException as rollback_error:
        return rollback_error
    return error
