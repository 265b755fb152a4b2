"""Every database failure maps to `StoreUnavailable` (503), a full disk to `StorageFull`; a constraint
violation or a bug does not (it must not be hidden as "try again")."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy import exc as sa

from keyturn.store import StorageFull, StoreUnavailable, unavailable_from


def wrapped(cls: type[sa.DBAPIError], orig: BaseException) -> sa.DBAPIError:
    return cls("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "failure",
    [
        wrapped(sa.OperationalError, psycopg.OperationalError("server closed the connection unexpectedly")),
        wrapped(sa.OperationalError, psycopg.errors.lookup("57014")("canceling statement due to timeout")),
        wrapped(sa.OperationalError, psycopg.errors.lookup("57P01")("terminating connection")),
        wrapped(sa.InterfaceError, psycopg.InterfaceError("the connection is closed")),
        wrapped(sa.OperationalError, sqlite3.OperationalError("database is locked")),
        sa.TimeoutError("QueuePool limit of size 10 overflow 20 reached, connection timed out"),
        psycopg.OperationalError("the database did not answer within 10.0 s"),
    ],
    ids=["disconnect", "statement-timeout", "admin-shutdown", "closed", "sqlite-locked", "pool", "deadline"],
)
def test_database_failures_are_unavailable(failure: BaseException) -> None:
    mapped = unavailable_from(failure)
    assert isinstance(mapped, StoreUnavailable) and not isinstance(mapped, StorageFull)
    assert mapped.code == "unavailable" and mapped.retry_after >= 1


@pytest.mark.parametrize(
    "failure",
    [
        wrapped(sa.OperationalError, psycopg.errors.lookup("53100")("could not extend file: No space left")),
        wrapped(sa.OperationalError, sqlite3.OperationalError("database or disk is full")),
    ],
    ids=["postgresql-53100", "sqlite-full"],
)
def test_a_full_disk_is_named(failure: BaseException) -> None:
    mapped = unavailable_from(failure)
    assert isinstance(mapped, StorageFull)
    assert mapped.code == "storage_full" and "disk is full" in str(mapped)


@pytest.mark.parametrize(
    "failure",
    [
        wrapped(sa.IntegrityError, psycopg.errors.lookup("23505")("duplicate key")),
        wrapped(sa.DataError, psycopg.errors.lookup("22021")("invalid byte sequence")),
        ValueError("a bug"),
    ],
    ids=["integrity", "data", "bug"],
)
def test_what_is_not_the_databases_state_is_not_unavailable(failure: BaseException) -> None:
    assert unavailable_from(failure) is None
