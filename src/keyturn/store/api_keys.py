"""`SqlApiKeyRepository`: agent API keys in the `api_keys` table (only the secret's hash is stored).

Implements the `ApiKeyRepository` protocol of `keyturn.identity.api_keys` (identity depends on the
store, never the reverse). Transactions go through the store's own helpers (SQLite `BEGIN IMMEDIATE` for
writes, typed errors when the database is unavailable).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.store.errors import StoreError
from keyturn.store.records import ApiKeyRecord
from keyturn.store.schema import api_keys

if TYPE_CHECKING:
    from keyturn.store.store import Store


class SqlApiKeyRepository:
    def __init__(self, store: Store, *, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock

    def get(self, key_id: str) -> ApiKeyRecord | None:
        with self._store._read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
        return None if row is None else _record(row)

    def add(self, record: ApiKeyRecord) -> None:
        try:
            with self._store._write() as tx:
                tx.conn.execute(
                    insert(api_keys).values(
                        key_id=record.key_id,
                        principal_id=record.principal_id,
                        kind=str(record.kind),
                        groups=json.dumps(sorted(record.groups)),
                        secret_hash=record.secret_hash,
                        created_at=record.created_at,
                        revoked_at=record.revoked_at,
                    )
                )
        except IntegrityError as exc:
            raise StoreError(f"an API key with id {record.key_id!r} exists already") from exc

    def revoke(self, key_id: str) -> bool:
        """False when there is no such key or it was revoked already (the first revocation time stays)."""
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
        return result.rowcount == 1

    def list(self) -> list[ApiKeyRecord]:
        with self._store._read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)).all()
        return [_record(row) for row in rows]

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(UTC)


def _record(row: Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row.key_id,
        principal_id=row.principal_id,
        kind=row.kind,
        groups=tuple(json.loads(row.groups)),
        secret_hash=row.secret_hash,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
