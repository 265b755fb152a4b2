"""Console rows: sessions, OIDC logins under way, passkeys. Shared by every replica through the database.

A session row is looked up on every console request, so revoking it (by its user, an admin, or logout) takes
effect on every replica at once; nothing about a session lives in a replica's memory.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.model import Event
from keyturn.store.errors import StoreError
from keyturn.store.schema import console_logins, console_sessions, passkeys
from keyturn.store.store import Store


@dataclass(frozen=True)
class SessionRow:
    id_hash: str
    principal_id: str
    principal: dict[str, Any]
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    user_agent: str


@dataclass(frozen=True)
class PendingLogin:
    state: str
    nonce: str
    code_verifier: str
    return_to: str
    created_at: datetime


@dataclass(frozen=True)
class PasskeyRow:
    credential_id: str
    principal_id: str
    public_key: str
    sign_count: int
    name: str
    transports: tuple[str, ...]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class SqlConsoleRepository:
    def __init__(self, store: Store, *, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))

    # --- sessions -----------------------------------------------------------------------------------

    def add_session(self, row: SessionRow) -> None:
        with self._store._write() as tx:
            tx.conn.execute(
                insert(console_sessions).values(
                    id_hash=row.id_hash,
                    principal_id=row.principal_id,
                    principal=json.dumps(row.principal, sort_keys=True),
                    created_at=row.created_at,
                    last_seen_at=row.last_seen_at,
                    expires_at=row.expires_at,
                    revoked_at=row.revoked_at,
                    revoked_by=row.revoked_by,
                    user_agent=row.user_agent,
                )
            )

    def session(self, id_hash: str) -> SessionRow | None:
        with self._store._read() as conn:
            row = conn.execute(select(console_sessions).where(console_sessions.c.id_hash == id_hash)).first()
        return None if row is None else _session(row)

    def touch_session(self, id_hash: str, at: datetime) -> None:
        with self._store._write() as tx:
            tx.conn.execute(
                update(console_sessions)
                .where(console_sessions.c.id_hash == id_hash, console_sessions.c.revoked_at.is_(None))
                .values(last_seen_at=at)
            )

    def revoke_session(self, id_hash: str, by: str, *, principal_id: str | None = None) -> bool:
        """Revoke one session (only `principal_id`'s when given). False if absent or revoked already."""
        conditions = [console_sessions.c.id_hash == id_hash, console_sessions.c.revoked_at.is_(None)]
        if principal_id is not None:
            conditions.append(console_sessions.c.principal_id == principal_id)
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(console_sessions).where(*conditions).values(revoked_at=self._clock(), revoked_by=by)
            )
        return result.rowcount == 1

    def sessions(
        self, *, principal_id: str | None = None, live_at: datetime | None = None
    ) -> list[SessionRow]:
        query = select(console_sessions).order_by(console_sessions.c.created_at.desc())
        if principal_id is not None:
            query = query.where(console_sessions.c.principal_id == principal_id)
        if live_at is not None:
            query = query.where(
                console_sessions.c.revoked_at.is_(None), console_sessions.c.expires_at > live_at
            )
        with self._store._read() as conn:
            rows = conn.execute(query.limit(500)).all()
        return [_session(row) for row in rows]

    # --- OIDC logins under way ----------------------------------------------------------------------

    def add_login(self, login: PendingLogin) -> None:
        with self._store._write() as tx:
            tx.conn.execute(
                delete(console_logins).where(console_logins.c.created_at < _hour_before(login.created_at))
            )
            tx.conn.execute(
                insert(console_logins).values(
                    state=login.state,
                    nonce=login.nonce,
                    code_verifier=login.code_verifier,
                    return_to=login.return_to,
                    created_at=login.created_at,
                )
            )

    def take_login(self, state: str) -> PendingLogin | None:
        """The login for `state`, deleted in the same transaction: a callback is answered at most once."""
        with self._store._write() as tx:
            row = tx.conn.execute(select(console_logins).where(console_logins.c.state == state)).first()
            if row is None:
                return None
            deleted = tx.conn.execute(delete(console_logins).where(console_logins.c.state == state))
            if deleted.rowcount != 1:
                return None
        return PendingLogin(
            state=row.state,
            nonce=row.nonce,
            code_verifier=row.code_verifier,
            return_to=row.return_to,
            created_at=row.created_at,
        )

    # --- passkeys -----------------------------------------------------------------------------------

    def add_passkey(self, row: PasskeyRow, events: tuple[Event, ...] = ()) -> None:
        """Store a registered passkey; `events` (its ledger event) are appended in the same transaction."""
        try:
            with self._store._write() as tx:
                tx.conn.execute(
                    insert(passkeys).values(
                        credential_id=row.credential_id,
                        principal_id=row.principal_id,
                        public_key=row.public_key,
                        sign_count=row.sign_count,
                        name=row.name,
                        transports=json.dumps(list(row.transports)),
                        created_at=row.created_at,
                        last_used_at=row.last_used_at,
                        revoked_at=row.revoked_at,
                    )
                )
                self._store._append_events(tx.conn, events)
        except IntegrityError as exc:
            raise StoreError("this passkey is registered already") from exc

    def passkeys(self, principal_id: str) -> builtins.list[PasskeyRow]:
        with self._store._read() as conn:
            rows = conn.execute(
                select(passkeys)
                .where(passkeys.c.principal_id == principal_id)
                .order_by(passkeys.c.created_at)
            ).all()
        return [_passkey(row) for row in rows]

    def passkey(self, credential_id: str) -> PasskeyRow | None:
        with self._store._read() as conn:
            row = conn.execute(select(passkeys).where(passkeys.c.credential_id == credential_id)).first()
        return None if row is None else _passkey(row)

    def use_passkey(self, credential_id: str, old_count: int, new_count: int, at: datetime) -> bool:
        """Record a use; False when the count moved meanwhile (a concurrent or cloned use)."""
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(passkeys)
                .where(
                    passkeys.c.credential_id == credential_id,
                    passkeys.c.sign_count == old_count,
                    passkeys.c.revoked_at.is_(None),
                )
                .values(sign_count=new_count, last_used_at=at)
            )
        return result.rowcount == 1

    def revoke_passkey(self, credential_id: str, principal_id: str, events: tuple[Event, ...] = ()) -> bool:
        """False when not `principal_id`'s or revoked already; `events` are appended only if this call
        revoked it."""
        with self._store._write() as tx:
            result = tx.conn.execute(
                update(passkeys)
                .where(
                    passkeys.c.credential_id == credential_id,
                    passkeys.c.principal_id == principal_id,
                    passkeys.c.revoked_at.is_(None),
                )
                .values(revoked_at=self._clock())
            )
            if result.rowcount == 1:
                self._store._append_events(tx.conn, events)
        return result.rowcount == 1


def _hour_before(at: datetime) -> datetime:
    return at - timedelta(hours=1)


def _session(row: Row[Any]) -> SessionRow:
    return SessionRow(
        id_hash=row.id_hash,
        principal_id=row.principal_id,
        principal=json.loads(row.principal),
        created_at=row.created_at,
        last_seen_at=row.last_seen_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        user_agent=row.user_agent,
    )


def _passkey(row: Row[Any]) -> PasskeyRow:
    return PasskeyRow(
        credential_id=row.credential_id,
        principal_id=row.principal_id,
        public_key=row.public_key,
        sign_count=row.sign_count,
        name=row.name,
        transports=tuple(json.loads(row.transports)),
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
