"""Typed errors of the store. Callers branch on these, never on SQLAlchemy or driver exceptions."""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg
from sqlalchemy import exc as sa

from keyturn.model import RequestRecord


class StoreError(Exception):
    """Something the store could not do. The base of every error below."""


class StoreUnavailable(StoreError):
    """The database did not answer or stayed locked (connection lost, busy timeout). Worth a retry."""

    code = "unavailable"
    retry_after = 1


class StorageFull(StoreUnavailable):
    """The database cannot write: its disk is full (SQLITE_FULL, PostgreSQL SQLSTATE 53100). Retrying soon
    will not help; an operator has to make room."""

    code = "storage_full"
    retry_after = 30


class NotFound(StoreError):
    """The row a write targets does not exist."""


class ConcurrentUpdate(StoreError):
    """Someone else changed the request first (its version moved, or its grant was already consumed).

    The caller re-reads the request and decides again on the fresh state: that is how every transition is
    applied exactly once.
    """


class DuplicateIdempotencyKey(StoreError):
    """The requester already submitted a request with this idempotency key; nothing was written."""

    def __init__(self, record: RequestRecord, response: dict[str, Any] | None) -> None:
        super().__init__(
            f"{record.request.requester.id} already used idempotency key "
            f"{record.request.idempotency_key!r} for request {record.id}"
        )
        self.record = record
        self.response = response


class InvalidCursor(StoreError, ValueError):
    """A pagination cursor that this store did not hand out."""


# SQLite's messages for a full disk (SQLITE_FULL) and for an I/O error (often the same cause on a full disk).
_SQLITE_FULL = ("database or disk is full", "disk i/o error")
_PG_DISK_FULL = ("53100",)  # disk_full; 53200 out_of_memory and 53300 too_many_connections are transient


def unavailable_from(exc: BaseException) -> StoreUnavailable | None:
    """The `StoreUnavailable` a database failure means, or None when it is not one (a constraint, a bug).

    A connection lost or refused, an answer that never came, a pool with no free connection, a statement
    cancelled by its timeout, a server shutting down, a disk full: all are the database's state, not the
    request's, and all are answered 503 (with the code `storage_full` for a full disk).
    """
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, sa.TimeoutError):  # the pool had no connection to give within pool_timeout
        return StoreUnavailable(f"the database is unavailable: no free connection ({exc})")
    original = getattr(exc, "orig", None) or exc
    message = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate in _PG_DISK_FULL or any(m in str(original).lower() for m in _SQLITE_FULL):
        return StorageFull(f"the database cannot write, its disk is full: {message}")
    if isinstance(exc, sa.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.OperationalError | sa.InterfaceError):
            return StoreUnavailable(f"the database is unavailable: {message}")
        return None
    if isinstance(exc, sa.DisconnectionError | sa.ResourceClosedError):
        return StoreUnavailable(f"the database is unavailable: {message}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | sqlite3.OperationalError):
        return StoreUnavailable(f"the database is unavailable: {message}")
    return None
