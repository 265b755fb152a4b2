"""Persistence: SQLAlchemy 2 Core tables, Alembic migrations, SQLite (WAL) and PostgreSQL (psycopg 3).

`Store` is the one entry point: it stores requests and their transitions, grants, ledger events and
decision records, and carries the `ChangeFeed` that wakes waiters when a request changes. See
docs/storage.md.
"""

from keyturn.store.api_keys import SqlApiKeyRepository
from keyturn.store.errors import (
    ConcurrentUpdate,
    DuplicateIdempotencyKey,
    InvalidCursor,
    NotFound,
    StorageFull,
    StoreError,
    StoreUnavailable,
    unavailable_from,
)
from keyturn.store.feed import ChangeFeed, PostgresChangeFeed, Subscription
from keyturn.store.records import (
    DecisionRecord,
    StoredCheckpoint,
    StoredEvent,
    StoredLedgerKey,
)
from keyturn.store.server_keys import SqlServerKeyRepository
from keyturn.store.store import Store

__all__ = [
    "ChangeFeed",
    "ConcurrentUpdate",
    "DecisionRecord",
    "DuplicateIdempotencyKey",
    "InvalidCursor",
    "NotFound",
    "PostgresChangeFeed",
    "SqlApiKeyRepository",
    "SqlServerKeyRepository",
    "StorageFull",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredCheckpoint",
    "StoredEvent",
    "StoredLedgerKey",
    "Subscription",
    "unavailable_from",
]
