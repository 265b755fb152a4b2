"""The web console: server-side sessions, OIDC logins under way, passkeys.

Revision ID: 0006_console
Revises: 0004_chat
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_console"
down_revision = "0004_chat"
branch_labels = None
depends_on = None


def ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.Text(), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        ts("created_at"),
        ts("last_seen_at"),
        ts("expires_at"),
        ts("revoked_at", nullable=True),
        sa.Column("revoked_by", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_principal_id", "console_sessions", ["principal_id"])
    op.create_table(
        "console_logins",
        sa.Column("state", sa.String(100), nullable=False),
        sa.Column("nonce", sa.String(100), nullable=False),
        sa.Column("code_verifier", sa.String(200), nullable=False),
        sa.Column("return_to", sa.Text(), nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("state", name="pk_console_logins"),
    )
    op.create_index("ix_console_logins_created_at", "console_logins", ["created_at"])
    op.create_table(
        "passkeys",
        sa.Column("credential_id", sa.String(700), nullable=False),
        sa.Column("principal_id", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("transports", sa.Text(), nullable=False),
        ts("created_at"),
        ts("last_used_at", nullable=True),
        ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("credential_id", name="pk_passkeys"),
    )
    op.create_index("ix_passkeys_principal_id", "passkeys", ["principal_id"])


def downgrade() -> None:
    op.drop_index("ix_passkeys_principal_id", table_name="passkeys")
    op.drop_table("passkeys")
    op.drop_index("ix_console_logins_created_at", table_name="console_logins")
    op.drop_table("console_logins")
    op.drop_index("ix_console_sessions_principal_id", table_name="console_sessions")
    op.drop_table("console_sessions")
