"""The orders database's schema: one list of migrations per backend, with the same version
numbers (services.common.database.Migrations). Never edit a released migration; append one."""

from __future__ import annotations

from services.common.database import Migrations

SQLITE_MIGRATIONS = [
    """
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        status TEXT NOT NULL,
        total_minor INTEGER,
        rejection_reason TEXT NOT NULL DEFAULT '',
        cancel_reason TEXT NOT NULL DEFAULT '',
        payment_id TEXT NOT NULL DEFAULT '',
        create_time_us INTEGER NOT NULL,
        update_time_us INTEGER NOT NULL
    );
    CREATE INDEX orders_by_user ON orders (user_id, create_time_us DESC, order_id DESC);
    CREATE TABLE order_items (
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        line INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL CHECK (quantity > 0),
        unit_price_minor INTEGER,
        PRIMARY KEY (order_id, line)
    );
    CREATE TABLE saga_state (
        order_id TEXT PRIMARY KEY REFERENCES orders (order_id),
        step TEXT NOT NULL,
        payment_token TEXT NOT NULL DEFAULT '',
        outcome TEXT,
        outcome_reason TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        update_time_us INTEGER NOT NULL
    );
    CREATE INDEX saga_in_flight ON saga_state (step) WHERE step <> 'DONE';
    CREATE TABLE idempotency_keys (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        fingerprint TEXT NOT NULL,
        create_time_us INTEGER NOT NULL
    );
    CREATE TABLE outbox (
        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        user_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        reason TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        total_minor INTEGER NOT NULL,
        occur_time_us INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        delivered_time_us INTEGER
    );
    CREATE INDEX outbox_pending ON outbox (sequence) WHERE state = 'PENDING';
    """,
    # Where each saga's work and each event come from (trace context and request id, as a
    # JSON object of headers), so later work joins the trace of the request behind it.
    """
    ALTER TABLE saga_state ADD COLUMN origin TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE outbox ADD COLUMN origin TEXT NOT NULL DEFAULT '{}';
    """,
    # Which replica drives each saga, until when (see "Leases" in the module docstring). Sagas
    # stored before have no owner and a lapsed lease: the first recovery pass takes them.
    """
    ALTER TABLE saga_state ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE saga_state ADD COLUMN lease_expires_us INTEGER NOT NULL DEFAULT 0;
    """,
]

# The same versions on Postgres. The outbox's sequence is an identity column: writes to the
# database run one transaction at a time (services.common.postgres), so sequence order is
# commit order, as the relay needs.
POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE orders (
        order_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        status TEXT NOT NULL,
        total_minor BIGINT,
        rejection_reason TEXT NOT NULL DEFAULT '',
        cancel_reason TEXT NOT NULL DEFAULT '',
        payment_id TEXT NOT NULL DEFAULT '',
        create_time_us BIGINT NOT NULL,
        update_time_us BIGINT NOT NULL
    );
    CREATE INDEX orders_by_user ON orders (user_id, create_time_us DESC, order_id DESC);
    CREATE TABLE order_items (
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        line INTEGER NOT NULL,
        sku TEXT NOT NULL,
        quantity BIGINT NOT NULL CHECK (quantity > 0),
        unit_price_minor BIGINT,
        PRIMARY KEY (order_id, line)
    );
    CREATE TABLE saga_state (
        order_id TEXT PRIMARY KEY REFERENCES orders (order_id),
        step TEXT NOT NULL,
        payment_token TEXT NOT NULL DEFAULT '',
        outcome TEXT,
        outcome_reason TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        update_time_us BIGINT NOT NULL
    );
    CREATE INDEX saga_in_flight ON saga_state (step) WHERE step <> 'DONE';
    CREATE TABLE idempotency_keys (
        idempotency_key TEXT PRIMARY KEY,
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        fingerprint TEXT NOT NULL,
        create_time_us BIGINT NOT NULL
    );
    CREATE TABLE outbox (
        sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        order_id TEXT NOT NULL REFERENCES orders (order_id),
        user_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        reason TEXT NOT NULL,
        currency_code TEXT NOT NULL,
        total_minor BIGINT NOT NULL,
        occur_time_us BIGINT NOT NULL,
        state TEXT NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        delivered_time_us BIGINT
    );
    CREATE INDEX outbox_pending ON outbox (sequence) WHERE state = 'PENDING';
    """,
    """
    ALTER TABLE saga_state ADD COLUMN origin TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE outbox ADD COLUMN origin TEXT NOT NULL DEFAULT '{}';
    """,
    """
    ALTER TABLE saga_state ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE saga_state ADD COLUMN lease_expires_us BIGINT NOT NULL DEFAULT 0;
    """,
]

MIGRATIONS = Migrations(sqlite=SQLITE_MIGRATIONS, postgres=POSTGRES_MIGRATIONS)
