"""The tables, as SQLAlchemy Core metadata.

The Alembic revisions in `migrations/versions/` create these tables; `tests/test_store_migrations.py`
checks that the two never drift apart. JSON columns are plain text holding JSON we serialise ourselves,
so the bytes are the same on SQLite and PostgreSQL (and `events.payload` is exactly the canonical JSON
that was hashed into the ledger).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no timestamp type and SQLAlchemy stores naive text there; PostgreSQL's `timestamptz` answers
    in the session time zone. Normalising to UTC on the way in and out makes values compare and sort the
    same everywhere (`next_deadline <= now` is a text comparison on SQLite).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: keyturn stores aware UTC datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ID = String(100)
DIGEST = String(100)  # "sha256:<64 hex>"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

requests = Table(
    "requests",
    metadata,
    Column("id", ID, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("action", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("requester", Text, nullable=False),
    Column("on_behalf_of", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("next_deadline", UtcDateTime, nullable=True, index=True),
    Column("version", Integer, nullable=False),
    Column("idempotency_key", Text, nullable=True),
    Column("record", Text, nullable=False),  # RequestRecord JSON: the source of truth
    Column("response", Text, nullable=True),  # the first submit answer, replayed for a repeated key
    Column("tier", String(100), nullable=True),  # the route's risk tier (pending-by-tier metrics)
    UniqueConstraint("requester", "idempotency_key"),
    # Keyset pagination, newest first: all requests, one status (the review queue), one requester.
    Index(None, "created_at", "id"),
    Index(None, "status", "created_at", "id"),
    Index(None, "requester", "created_at", "id"),
)

request_groups = Table(
    "request_groups",
    metadata,
    Column("request_id", ID, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True),
    Column("group", Text, primary_key=True),
    Index(None, "group"),
)

# The review queue's index: one row per (route group, pending request), deleted in the transaction that
# takes the request out of pending. A reviewer's queue reads only the rows of their own groups, newest
# first, so its cost does not grow with the pending requests of other groups nor with decided ones
# (`request_groups` keeps every request's groups for ever, for listings that include decided requests).
pending_route_groups = Table(
    "pending_route_groups",
    metadata,
    Column("group", Text, primary_key=True),
    Column("created_at", UtcDateTime, primary_key=True),
    Column("request_id", ID, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True),
    Index(None, "request_id"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", ID, primary_key=True),
    Column("request_id", ID, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("params_digest", DIGEST, nullable=False),
    Column("issued_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("consumed_at", UtcDateTime, nullable=True),
    Column("consumed_by", Text, nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("type", String(50), nullable=False),
    Column("actor", Text, nullable=False),
    Column("request_id", ID, nullable=True, index=True),
    Column("payload", Text, nullable=False),  # canonical JSON (RFC 8785), as hashed into the leaf
    Column("leaf_hash", String(64), nullable=False),  # hex SHA-256(0x00 || leaf bytes)
)

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("next_seq", BigInteger, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", String(64), nullable=False),
    Column("note", Text, nullable=False),
    Column("key_name", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

ledger_keys = Table(
    "ledger_keys",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("public_key", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("retired_at", UtcDateTime, nullable=True),
)

decision_records = Table(
    "decision_records",
    metadata,
    Column("id", ID, primary_key=True),
    Column("ts", UtcDateTime, nullable=False),
    Column("request_id", ID, nullable=True, index=True),
    Column("request_digest", DIGEST, nullable=False),
    Column("decision", String(20), nullable=False),
    Column("rules", Text, nullable=False),  # JSON list of rule names
    Column("policy_revision", Text, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(100), primary_key=True),
    Column("principal_id", Text, nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("groups", Text, nullable=False),  # JSON list
    Column("secret_hash", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
)

# --- the web console (migration 0006_console) -----------------------------------------------------------

console_sessions = Table(
    "console_sessions",
    metadata,
    # SHA-256 (hex) of the cookie's secret: a database read never yields a usable session.
    Column("id_hash", String(64), primary_key=True),
    Column("principal_id", Text, nullable=False, index=True),
    Column("principal", Text, nullable=False),  # Principal JSON (groups, roles, authn) as logged in
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_seen_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),  # the absolute timeout
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("revoked_by", Text, nullable=True),
    Column("user_agent", Text, nullable=False),
)

console_logins = Table(
    "console_logins",
    metadata,
    # An OIDC login under way: state -> nonce, PKCE verifier, where to go after. Used once, on any replica.
    Column("state", String(100), primary_key=True),
    Column("nonce", String(100), nullable=False),
    Column("code_verifier", String(200), nullable=False),
    Column("return_to", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False, index=True),
)

passkeys = Table(
    "passkeys",
    metadata,
    Column("credential_id", String(700), primary_key=True),  # base64url
    Column("principal_id", Text, nullable=False, index=True),
    Column("public_key", Text, nullable=False),  # COSE key, base64url
    Column("sign_count", BigInteger, nullable=False),
    Column("name", Text, nullable=False),
    Column("transports", Text, nullable=False),  # JSON list
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_used_at", UtcDateTime, nullable=True),
    Column("revoked_at", UtcDateTime, nullable=True),
)

server_keys = Table(
    "server_keys",
    metadata,
    Column("kid", String(100), primary_key=True),
    Column("purpose", String(32), nullable=False),  # grant, ledger, redaction, …
    Column("algorithm", String(20), nullable=False),  # Ed25519 | HMAC-SHA256
    Column("public_key", Text, nullable=True),  # base64url raw public key; NULL for a symmetric key
    Column("sealed", Text, nullable=False),  # base64url(nonce || AES-256-GCM(raw key)) under the KEK
    Column("kek_id", String(32), nullable=False),  # which key-encryption key sealed it
    Column("state", String(10), nullable=False),  # current | verifying | retired
    Column("created_at", UtcDateTime, nullable=False),
    Column("retired_at", UtcDateTime, nullable=True),
    # One current key per purpose: of replicas creating the first key at once, one insert wins.
    Index(
        "uq_server_keys_current",
        "purpose",
        unique=True,
        sqlite_where=text("state = 'current'"),
        postgresql_where=text("state = 'current'"),
    ),
)

# --- the outbox (revision 0008_outbox) ------------------------------------------------------------------

# SQLite makes only an INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets a 64-bit identity.
SEQ = BigInteger().with_variant(Integer, "sqlite")

outbox = Table(
    "outbox",
    metadata,
    # Written in the transition's transaction, so for one request the order of `seq` is the order of its
    # transitions: the dispatcher delivers the rows of one (request, target) in `seq` order.
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(100), nullable=False, unique=True),  # idempotency key: webhook-id on every retry
    Column("request_id", ID, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(20), nullable=False),  # keyturn.channels.base.DeliveryKind
    Column("target", Text, nullable=False),  # "slack:#ops-approvals", "webhook:siem"
    Column("event_type", String(50), nullable=False),
    Column("status", String(20), nullable=False),  # pending | done | dead | cancelled
    Column("scheduled_at", UtcDateTime, nullable=False),  # when the row first became due (never moves)
    Column("due_at", UtcDateTime, nullable=False),  # the next attempt
    Column("attempts", Integer, nullable=False, default=0),
    Column("leased_by", Text, nullable=True),  # the replica delivering it now
    Column("leased_until", UtcDateTime, nullable=True),  # a replica that died lets go at this time
    Column("last_error", Text, nullable=True),
    Column("payload", Text, nullable=True),  # JSON: the view as of the transition (events), options
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index(None, "status", "due_at"),
    Index(None, "request_id", "target", "seq"),
)

message_refs = Table(
    "message_refs",
    metadata,
    Column("request_id", ID, ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True),
    Column("target", Text, primary_key=True),
    Column("conversation", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("extra", Text, nullable=False),  # JSON object of strings
    Column("created_at", UtcDateTime, nullable=False),
)

channel_targets = Table(
    "channel_targets",
    metadata,
    # A target switched off by its endpoint (410 Gone) until an admin turns it on again.
    Column("target", String(300), primary_key=True),
    Column("disabled_at", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)

# --- chat (Slack): linked accounts, one-time link codes, seen request signatures ----------------------

chat_links = Table(
    "chat_links",
    metadata,
    Column("provider", String(20), primary_key=True),  # "slack"
    Column("team_id", String(100), primary_key=True),
    Column("user_id", String(100), primary_key=True),
    Column("principal_id", Text, nullable=False, index=True),  # the principal id only: groups never stored
    Column("method", String(20), nullable=False),  # "code" (the person linked it) | "email" (admin opt-in)
    Column("linked_at", UtcDateTime, nullable=False),
)

chat_link_codes = Table(
    "chat_link_codes",
    metadata,
    Column("code_hash", DIGEST, primary_key=True),  # sha256 of the one-time code; the code is never stored
    Column("provider", String(20), nullable=False),
    Column("team_id", String(100), nullable=False),
    Column("user_id", String(100), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
    Column("used_at", UtcDateTime, nullable=True),
)

chat_seen_signatures = Table(
    "chat_seen_signatures",
    metadata,
    Column("digest", DIGEST, primary_key=True),  # sha256 of "v0:timestamp:signature"
    Column("seen_at", UtcDateTime, nullable=False, index=True),
)
