"""Engines for the two supported backends, with the connection settings keyturn relies on.

SQLite (the default, one process or one machine): WAL so readers never block the writer, a busy timeout
so writers queue instead of failing, foreign keys on, and `BEGIN IMMEDIATE` for write transactions so two
writers never both read a state and then race to update it (a deferred transaction that upgrades to a
write lock can fail with SQLITE_BUSY at once, without waiting).

PostgreSQL (several replicas): psycopg 3, pre-ping so a replica survives a database restart, READ
COMMITTED; correctness comes from conditional updates and row locks, not from the isolation level.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from keyturn.store.errors import StoreError

Backend = Literal["sqlite", "postgresql"]

SQLITE_BUSY_TIMEOUT_MS = 30_000

# Execution option read by the SQLite `begin` hook: "IMMEDIATE" takes the write lock at BEGIN.
BEGIN_MODE = "keyturn_sqlite_begin"


def normalise_url(url: str) -> tuple[URL, Backend]:
    """`sqlite:///path` stays; `postgresql://` and `postgres://` use psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a message worth keeping
        raise StoreError(f"not a database URL: {url!r} ({exc})") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            # Each pooled connection would see its own empty in-memory database.
            raise StoreError("an in-memory SQLite database cannot be shared; use sqlite:///PATH")
        return parsed, "sqlite"
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg"), "postgresql"
    raise StoreError(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://…")


def libpq_conninfo(url: URL) -> str:
    """The URL as libpq understands it (for the dedicated LISTEN connection): same host, same options."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def create(url: URL, backend: Backend, **engine_options: Any) -> Engine:
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **engine_options,
        )
        _install_sqlite_hooks(engine)
        return engine
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
    options.update(engine_options)
    return create_engine(url, **options)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's `begin` hook below issue BEGIN itself, instead of pysqlite's implicit one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            # FULL: an approval or a ledger event that was acknowledged survives a power cut too.
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN_MODE, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Switch the database file to WAL (persistent: once done, every later connection finds it so).

    Switching needs an exclusive lock and SQLite answers "database is locked" at once, without its busy
    handler, when another connection holds one, as happens when several processes open a new database
    together. Retry until one of them has switched it.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"SQLite refused WAL mode (journal_mode is {mode!r})")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
