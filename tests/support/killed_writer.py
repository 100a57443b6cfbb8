"""A process that writes to a Database and kills itself (SIGKILL) mid-flight, for the test
that every write it acknowledged is in the file afterwards.

Run `python -m tests.support.killed_writer PATH WRITES KILL_AFTER`: it starts WRITES
concurrent writes, prints the id of each as its write() returns (so the batches still in flight
when it dies are the test's interest), and kills itself right after the KILL_AFTER-th.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from services.common.database import Database
from services.common.sql import Connection

MIGRATIONS = ["CREATE TABLE acknowledged (id INTEGER PRIMARY KEY);"]


async def main(path: Path, writes: int, kill_after: int) -> None:
    database = await Database.open(path, MIGRATIONS)
    acknowledged = 0

    async def write(number: int) -> None:
        nonlocal acknowledged

        def insert(db: Connection) -> None:
            db.execute("INSERT INTO acknowledged VALUES (?)", (number,))

        await database.write(insert)
        print(number, flush=True)
        acknowledged += 1
        if acknowledged == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    await asyncio.gather(*(write(number) for number in range(writes)))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
