"""`ChatAccounts`: chat users linked to keyturn principals, one-time link codes and seen request signatures.

A link maps (provider, team id, user id) to a principal id and nothing else: groups are never stored here,
they come from keyturn's identity source at the moment of review (DESIGN §3, Slack). Link codes are stored
as SHA-256 digests, expire, and are redeemed at most once (a conditional UPDATE, so two replicas racing
on the same code cannot both win). Seen signatures are how every replica refuses a replayed, validly
signed interactivity request inside Slack's 5-minute window: the first INSERT wins, the primary key
refuses the second.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from keyturn.store.schema import chat_link_codes, chat_links, chat_seen_signatures

if TYPE_CHECKING:
    from keyturn.store.store import Store

CODE_PREFIX = "ktl_"  # link codes: recognisable in a paste, and by the redaction patterns' neighbours
SEEN_SIGNATURE_RETENTION = timedelta(minutes=10)  # twice the signature window: older ones are refused anyway


@dataclass(frozen=True)
class ChatLink:
    provider: str
    team_id: str
    user_id: str
    principal_id: str
    method: str  # "code" | "email"
    linked_at: datetime


class LinkCodeInvalid(Exception):
    """The code is unknown, expired or used already (one message for all three: codes are no oracle)."""


def _digest(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


class ChatAccounts:
    def __init__(self, store: Store) -> None:
        self._store = store

    # --- links ---------------------------------------------------------------------------------------

    def link(self, provider: str, team_id: str, user_id: str) -> ChatLink | None:
        with self._store._read() as conn:
            row = conn.execute(
                select(chat_links).where(
                    chat_links.c.provider == provider,
                    chat_links.c.team_id == team_id,
                    chat_links.c.user_id == user_id,
                )
            ).first()
        return None if row is None else ChatLink(**row._asdict())

    def links_of(self, principal_id: str, provider: str | None = None) -> list[ChatLink]:
        query = select(chat_links).where(chat_links.c.principal_id == principal_id)
        if provider is not None:
            query = query.where(chat_links.c.provider == provider)
        with self._store._read() as conn:
            rows = conn.execute(query.order_by(chat_links.c.linked_at)).all()
        return [ChatLink(**row._asdict()) for row in rows]

    def save_link(self, link: ChatLink) -> None:
        """Link (or re-link) a chat account: the newest link of an account replaces the older one."""
        with self._store._write() as tx:
            tx.conn.execute(
                delete(chat_links).where(
                    chat_links.c.provider == link.provider,
                    chat_links.c.team_id == link.team_id,
                    chat_links.c.user_id == link.user_id,
                )
            )
            tx.conn.execute(insert(chat_links).values(**link.__dict__))

    def unlink(self, provider: str, team_id: str, user_id: str, principal_id: str) -> bool:
        with self._store._write() as tx:
            result = tx.conn.execute(
                delete(chat_links).where(
                    chat_links.c.provider == provider,
                    chat_links.c.team_id == team_id,
                    chat_links.c.user_id == user_id,
                    chat_links.c.principal_id == principal_id,
                )
            )
        return result.rowcount == 1

    # --- one-time link codes -------------------------------------------------------------------------

    def new_code(self, provider: str, team_id: str, user_id: str, now: datetime, ttl: timedelta) -> str:
        """A fresh one-time code for this chat account; only its digest is stored."""
        code = CODE_PREFIX + secrets.token_urlsafe(18)
        with self._store._write() as tx:
            tx.conn.execute(delete(chat_link_codes).where(chat_link_codes.c.expires_at < now))
            tx.conn.execute(
                insert(chat_link_codes).values(
                    code_hash=_digest(code),
                    provider=provider,
                    team_id=team_id,
                    user_id=user_id,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
        return code

    def redeem(self, code: str, principal_id: str, now: datetime) -> ChatLink:
        """Link the code's chat account to `principal_id` (the authenticated human who presents the code)."""
        digest = _digest(code.strip())
        with self._store._write() as tx:
            claimed = tx.conn.execute(
                update(chat_link_codes)
                .where(
                    chat_link_codes.c.code_hash == digest,
                    chat_link_codes.c.used_at.is_(None),
                    chat_link_codes.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if claimed.rowcount != 1:
                raise LinkCodeInvalid(
                    "this link code is unknown, expired or used already; click again in chat"
                )
            row = tx.conn.execute(select(chat_link_codes).where(chat_link_codes.c.code_hash == digest)).one()
            link = ChatLink(
                provider=row.provider,
                team_id=row.team_id,
                user_id=row.user_id,
                principal_id=principal_id,
                method="code",
                linked_at=now,
            )
            tx.conn.execute(
                delete(chat_links).where(
                    chat_links.c.provider == link.provider,
                    chat_links.c.team_id == link.team_id,
                    chat_links.c.user_id == link.user_id,
                )
            )
            tx.conn.execute(insert(chat_links).values(**link.__dict__))
        return link

    # --- replay protection ---------------------------------------------------------------------------

    def first_sight(self, signature: str, timestamp: str, now: datetime) -> bool:
        """True the first time this signed request is seen on any replica; False for a replay."""
        digest = _digest(f"v0:{timestamp}:{signature}")
        try:
            with self._store._write() as tx:
                tx.conn.execute(
                    delete(chat_seen_signatures).where(
                        chat_seen_signatures.c.seen_at < now - SEEN_SIGNATURE_RETENTION
                    )
                )
                tx.conn.execute(insert(chat_seen_signatures).values(digest=digest, seen_at=now))
        except IntegrityError:
            return False
        return True
