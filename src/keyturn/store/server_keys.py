"""`SqlServerKeyRepository`: the rows of `server_keys` for a `keyturn.signing_keys.DatabaseKeyRing`.

The rows hold sealed keys only; sealing and unsealing happen in the key ring, which alone has the
key-encryption key. Every write is one transaction (SQLite `BEGIN IMMEDIATE`), and the partial unique index
on `purpose WHERE state = 'current'` keeps one current key per purpose across replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.signing_keys import KeyRow
from keyturn.store.schema import server_keys

if TYPE_CHECKING:
    from keyturn.store.store import Store


class SqlServerKeyRepository:
    def __init__(self, store: Store) -> None:
        self._store = store

    def all(self) -> list[KeyRow]:
        with self._store._read() as conn:
            rows = conn.execute(
                select(server_keys).order_by(
                    server_keys.c.purpose, server_keys.c.created_at, server_keys.c.kid
                )
            ).all()
        return [_row(r) for r in rows]

    def add(self, rows: Sequence[KeyRow]) -> bool:
        try:
            with self._store._write() as tx:
                tx.conn.execute(insert(server_keys), [_values(r) for r in rows])
        except IntegrityError:
            return False
        return True

    def rotate(self, row: KeyRow, now: datetime) -> bool:
        try:
            with self._store._write() as tx:
                tx.conn.execute(
                    update(server_keys)
                    .where(server_keys.c.purpose == row.purpose, server_keys.c.state == "current")
                    .values(state="verifying")
                )
                tx.conn.execute(insert(server_keys).values(**_values(row)))
        except IntegrityError:
            return False
        return True

    def retire(self, kid: str, now: datetime) -> bool:
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(server_keys)
                .where(server_keys.c.kid == kid, server_keys.c.state == "verifying")
                .values(state="retired", retired_at=now)
            )
        return result.rowcount == 1

    def count(self) -> int:
        with self._store._read() as conn:
            return len(conn.execute(select(server_keys.c.kid)).all())


def _values(row: KeyRow) -> dict[str, Any]:
    return {
        "kid": row.kid,
        "purpose": row.purpose,
        "algorithm": row.algorithm,
        "public_key": row.public_key,
        "sealed": row.sealed,
        "kek_id": row.kek_id,
        "state": row.state,
        "created_at": row.created_at,
        "retired_at": row.retired_at,
    }


def _row(row: Row[Any]) -> KeyRow:
    return KeyRow(
        kid=row.kid,
        purpose=row.purpose,
        algorithm=row.algorithm,
        public_key=row.public_key,
        sealed=row.sealed,
        kek_id=row.kek_id,
        state=row.state,
        created_at=row.created_at,
        retired_at=row.retired_at,
    )
