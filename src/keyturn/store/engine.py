"""Engines for the two supported backends, with the connection settings keyturn relies on.

SQLite (the default, one process or one machine): WAL so readers never block the writer, a busy timeout
so writers queue instead of failing, foreign keys on, and `BEGIN IMMEDIATE` for write transactions so two
writers never both read a state and then race to update it (a deferred transaction that upgrades to a
write lock can fail with SQLITE_BUSY at once, without waiting).

PostgreSQL (several replicas): psycopg 3, pre-ping so a replica survives a database restart, READ
COMMITTED; correctness comes from conditional updates and row locks, not from the isolation level.

Every wait on PostgreSQL is bounded, so a database that stops answering gives a quick `StoreUnavailable`
(503) instead of a hung worker thread: a connect timeout, TCP keepalives and a TCP user timeout (a peer that
vanished), a server-side `statement_timeout` (a slow query or a lock wait), a pool timeout (every
connection busy) and, for a peer that accepts bytes but never answers (a partition behind a proxy or a
load balancer, where keepalives are answered by the middlebox), a client-side deadline on every answer:
`DeadlineConnection` closes a connection whose answer is late. docs/operations.md lists the bounds.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Literal

import psycopg
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import ConnectionPoolEntry

from keyturn.store.errors import StoreError

Backend = Literal["sqlite", "postgresql"]

SQLITE_BUSY_TIMEOUT_MS = 30_000

# PostgreSQL bounds (seconds). The server cancels a statement first (a clean error, the connection stays
# usable); the client-side deadline comes later and only fires when the server is not answering at all.
PG_CONNECT_TIMEOUT = 5
PG_STATEMENT_TIMEOUT = 8.0
PG_ANSWER_TIMEOUT = 10.0
PG_POOL_TIMEOUT = 5.0
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
PG_TCP_USER_TIMEOUT_MS = 20_000

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
    """The URL as libpq understands it (for the dedicated LISTEN connection): same host, same options,
    plus the connect timeout and keepalives of `postgres_connect_args` where the URL does not set them."""
    extra = {k: str(v) for k, v in postgres_connect_args(url).items() if k != "options"}
    return url.set(drivername="postgresql").update_query_dict(extra).render_as_string(hide_password=False)


def postgres_connect_args(url: URL) -> dict[str, Any]:
    """libpq parameters that bound every wait, unless the URL sets them itself (it wins)."""
    defaults: dict[str, Any] = {
        "connect_timeout": PG_CONNECT_TIMEOUT,
        "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS,
        **PG_KEEPALIVES,
    }
    args = {key: value for key, value in defaults.items() if key not in url.query}
    # `options` may carry the URL's own settings (a search_path): add to them, never replace them.
    options = url.query.get("options", "")
    if isinstance(options, tuple):
        options = " ".join(options)
    if "statement_timeout" not in options:
        args["options"] = f"{options} -c statement_timeout={int(PG_STATEMENT_TIMEOUT * 1000)}".strip()
    return args


class DeadlineConnection(psycopg.Connection[Any]):
    """A psycopg connection that waits at most `answer_timeout` seconds for any answer of the server.

    A late answer closes the connection (its protocol state is unknown) and raises `OperationalError`, which
    SQLAlchemy sees as a disconnect: the pooled connection is discarded and the caller gets a 503.
    """

    answer_timeout: float | None = PG_ANSWER_TIMEOUT  # None: wait as long as it takes (migrations)

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) < 2 and kwargs.get("timeout") is None and self.answer_timeout is not None:
            kwargs["timeout"] = self.answer_timeout
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError as exc:
            if type(exc).__name__ != "_WaitTimeout":
                raise
            self.pgconn.finish()  # `broken` from now on
            raise psycopg.OperationalError(
                f"the database did not answer within {kwargs.get('timeout', self.answer_timeout)} s"
            ) from None


def create(url: URL, backend: Backend, **engine_options: Any) -> Engine:
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            **engine_options,
        )
        _install_sqlite_hooks(engine)
        return engine
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 10,
        "max_overflow": 20,
        "pool_timeout": PG_POOL_TIMEOUT,
        "connect_args": postgres_connect_args(url),
    }
    options.update(engine_options)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        return DeadlineConnection.connect(*cargs, **cparams)

    return engine


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
