"""`SqlApiKeyRepository`: agent API keys in the `api_keys` table (only the secret's hash is stored).

Implements the `ApiKeyRepository` protocol of `keyturn.identity.api_keys` (identity depends on the
store, never the reverse). Transactions go through the store's own helpers (SQLite `BEGIN IMMEDIATE` for
writes, typed errors when the database is unavailable).

Authentication reads a key through `get_recent`, which reuses a key read in the last
`AUTH_CACHE_SECONDS` (a SELECT per request was ~15% of an allowed submit's CPU, issue #12). The bound is
what revocation costs: a key revoked through this store object (the server's own admin API) is forgotten at
once; one revoked elsewhere (`keyturn api-keys revoke`, another replica) is refused by this server at most
`AUTH_CACHE_SECONDS` later. Only keys that were found are kept (an unknown id is asked again each time, so a
key created elsewhere works at once), at most `AUTH_CACHE_ENTRIES` of them.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.model import Event
from keyturn.store.errors import StoreError
from keyturn.store.records import ApiKeyRecord
from keyturn.store.schema import api_keys

if TYPE_CHECKING:
    from keyturn.store.store import Store

AUTH_CACHE_SECONDS = 2.0
AUTH_CACHE_ENTRIES = 10_000

_KEY_BY_ID = select(api_keys).where(api_keys.c.key_id == bindparam("b_key_id"))


class _RecentKeys:
    """Keys read for authentication, per store object: every repository on one store shares them, so a
    revocation through any of them (the admin API's, the authenticator's) is seen by all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, ApiKeyRecord]] = {}

    def get(self, key_id: str, now: float) -> ApiKeyRecord | None:
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, record: ApiKeyRecord, until: float) -> None:
        with self._lock:
            if len(self._entries) >= AUTH_CACHE_ENTRIES:
                self._entries.pop(next(iter(self._entries)))  # the oldest entry
            self._entries[record.key_id] = (until, record)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._entries.pop(key_id, None)


_recent_by_store: weakref.WeakKeyDictionary[Store, _RecentKeys] = weakref.WeakKeyDictionary()
_recent_lock = threading.Lock()


def _recent_keys(store: Store) -> _RecentKeys:
    with _recent_lock:
        recent = _recent_by_store.get(store)
        if recent is None:
            recent = _recent_by_store[store] = _RecentKeys()
        return recent


class SqlApiKeyRepository:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._recent = _recent_keys(store)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key as stored now (administration reads this)."""
        with self._store._read() as conn:
            row = conn.execute(_KEY_BY_ID, {"b_key_id": key_id}).first()
        return None if row is None else _record(row)

    def get_recent(self, key_id: str) -> ApiKeyRecord | None:
        """The key as stored at most `AUTH_CACHE_SECONDS` ago (authentication reads this)."""
        now = self._monotonic()
        cached = self._recent.get(key_id, now)
        if cached is not None:
            return cached
        record = self.get(key_id)
        if record is not None:
            self._recent.put(record, now + AUTH_CACHE_SECONDS)
        return record

    def add(self, record: ApiKeyRecord, events: tuple[Event, ...] = ()) -> None:
        """Store a key; `events` (its ledger events) are appended in the same transaction."""
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
                self._store._append_events(tx.conn, events)
        except IntegrityError as exc:
            raise StoreError(f"an API key with id {record.key_id!r} exists already") from exc

    def revoke(self, key_id: str, events: tuple[Event, ...] = ()) -> bool:
        """False when there is no such key or it was revoked already (the first revocation time stays).
        `events` are appended in the same transaction, only if this call revoked the key."""
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            if result.rowcount == 1:
                self._store._append_events(tx.conn, events)
        self._recent.forget(key_id)
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
