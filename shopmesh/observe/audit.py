"""`shopmesh audit`: whether the data of the running local mesh adds up across its services,
after whatever you did to it: every order finished, no order charged twice, money taken only
for confirmed orders, no stock left held, every order event delivered and notified
once. It reads each service's own store directly (its SQLite file, or its Postgres database on
`up --db postgres`), read-only, the way an operator would check after an incident; it never
goes through the services, so it also works while one of them is down.

What each check means:
- sagas finished: no order is still between two saga steps (recovery resumes any it finds; a
  checkout placed a moment ago may still be running, hence `--wait`).
- events delivered: the outbox has no event waiting for notifications (none parked FAILED).
- charged at most once: no order has two payments.
- charges match orders: a captured payment exists exactly for each CONFIRMED order with a
  total; a REJECTED or CANCELLED order's payment, if any, was refunded.
- no stock held: no reservation is still HELD for an order whose saga has finished.
- every delivered event notified: each event the outbox delivered has its notification (the
  notifications store refuses a second one by its unique event id: none is ever twice).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.config import DATABASE_URL, DB_PATH
from services.common.database import is_postgres
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh

Rows = list[tuple[Any, ...]]
Snapshot = Callable[[str, Sequence[str]], list[Rows]]
"""(service, statements) -> each one's rows, read in one snapshot of that service's store."""

STORES = ("orders", "payments", "inventory", "notifications")
# How many offending ids a finding names (the count is always whole).
SHOWN = 3


@dataclass(frozen=True)
class Finding:
    """One check: what it checks, whether it holds, and what was found."""

    check: str
    ok: bool
    detail: str


def store_locations(mesh: RunningMesh) -> dict[str, str]:
    """service -> where its store lives (a Postgres URL or an SQLite file), as its apps were
    told at `up`."""
    locations: dict[str, str] = {}
    for pod in mesh.pods.values():
        env = mesh.state.processes[pod.app_name].env
        location = env.get(DATABASE_URL) or env.get(DB_PATH)
        if location:
            locations.setdefault(pod.service, location)
    missing = [service for service in STORES if service not in locations]
    if missing:
        raise MeshError(f"the mesh has no store for {', '.join(missing)}: nothing to audit")
    return locations


@contextmanager
def store_reader(locations: dict[str, str]) -> Iterator[Snapshot]:
    """A Snapshot over the stores at `locations`, each opened read-only once, closed at the
    end."""
    opened: dict[str, Any] = {}

    def snapshot(service: str, statements: Sequence[str]) -> list[Rows]:
        if service not in opened:
            opened[service] = _open(locations[service])
        connection = opened[service]
        begin = (
            "BEGIN ISOLATION LEVEL REPEATABLE READ" if is_postgres(locations[service]) else "BEGIN"
        )
        connection.execute(begin)
        try:
            return [
                [tuple(row) for row in connection.execute(sql).fetchall()] for sql in statements
            ]
        finally:
            connection.execute("COMMIT")

    try:
        yield snapshot
    finally:
        for connection in opened.values():
            connection.close()


def _open(location: str) -> Any:
    if is_postgres(location):
        import psycopg

        # Read-only; `snapshot` opens each transaction itself.
        return psycopg.connect(
            location, autocommit=True, options="-c default_transaction_read_only=on"
        )
    path = Path(location)
    if not path.exists():
        raise MeshError(f"{path} does not exist: has the mesh run yet?")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def audit(snapshot: Snapshot) -> list[Finding]:
    """Every check (see module docstring), on the stores `snapshot` reads.

    Orders are read first, in one snapshot, the others after: whatever a saga that orders has
    finished did in another store is already there, so an order finishing meanwhile is never
    taken for a broken one (it is still in flight in the orders read)."""
    orders, sagas, outbox = snapshot(
        "orders",
        [
            "SELECT order_id, status, COALESCE(total_minor, 0) FROM orders",
            "SELECT order_id FROM saga_state WHERE step <> 'DONE'",
            "SELECT event_id, state FROM outbox",
        ],
    )
    [payments] = snapshot("payments", ["SELECT order_id, status FROM payments"])
    [held_rows] = snapshot("inventory", ["SELECT order_id FROM reservations WHERE status = 'HELD'"])
    [notified_rows] = snapshot("notifications", ["SELECT event_id FROM notifications"])
    statuses: dict[str, str] = {order_id: status for order_id, status, _ in orders}
    totals: dict[str, int] = {order_id: total for order_id, _, total in orders}
    in_flight = [row[0] for row in sagas]
    held = [row[0] for row in held_rows]
    notified = {row[0] for row in notified_rows}

    charges: dict[str, list[str]] = {}
    for order_id, status in payments:
        charges.setdefault(order_id, []).append(status)
    finished = set(statuses) - set(in_flight)
    confirmed = {o for o, s in statuses.items() if s == "CONFIRMED" and totals[o] > 0}
    captured = {o for o, found in charges.items() if "CAPTURED" in found}
    waiting = [event for event, state in outbox if state == "PENDING"]
    parked = [event for event, state in outbox if state == "FAILED"]
    delivered = [event for event, state in outbox if state == "DELIVERED"]
    return [
        _finding("sagas finished", f"{len(statuses)} orders", in_flight, "still in flight"),
        _finding(
            "events delivered",
            f"{len(delivered)} delivered",
            waiting + parked,
            f"undelivered ({len(waiting)} waiting, {len(parked)} parked FAILED)",
        ),
        _finding(
            "charged at most once",
            f"{len(payments)} payments",
            [o for o, found in charges.items() if len(found) > 1],
            "orders charged more than once",
        ),
        _finding(
            "charges match orders",
            f"{len(captured)} captured, {len(confirmed)} confirmed",
            sorted((confirmed - captured) | (captured & (finished - confirmed))),
            "orders whose charge and status disagree",
        ),
        _finding(
            "no stock held",
            f"{len(held)} held for orders in flight",
            [o for o in held if o in finished],
            "reservations held for finished orders",
        ),
        _finding(
            "every delivered event notified",
            f"{len(notified)} notifications",
            [event for event in delivered if event not in notified],
            "delivered events without a notification",
        ),
    ]


def _finding(check: str, counted: str, offenders: Sequence[str], what: str) -> Finding:
    if not offenders:
        return Finding(check, True, counted)
    shown = ", ".join(map(str, offenders[:SHOWN])) + (", ..." if len(offenders) > SHOWN else "")
    return Finding(check, False, f"{len(offenders)} {what}: {shown}")


def audit_until_settled(snapshot: Snapshot, wait: float) -> list[Finding]:
    """`audit`, again every half second for up to `wait` seconds while anything fails (sagas
    and events still in flight settle on their own); the last findings."""
    deadline = time.monotonic() + wait
    while True:
        findings = audit(snapshot)
        if all(f.ok for f in findings) or time.monotonic() >= deadline:
            return findings
        time.sleep(0.5)
