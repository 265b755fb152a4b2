"""Chat accounts: Slack users linked to principals, one-time link codes, seen request signatures.

Revision ID: 0004_chat
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_chat"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

DIGEST = sa.String(100)


def ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "chat_links",
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("team_id", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("principal_id", sa.Text(), nullable=False),
        sa.Column("method", sa.String(20), nullable=False),
        ts("linked_at"),
        sa.PrimaryKeyConstraint("provider", "team_id", "user_id", name="pk_chat_links"),
    )
    op.create_index("ix_chat_links_principal_id", "chat_links", ["principal_id"])
    op.create_table(
        "chat_link_codes",
        sa.Column("code_hash", DIGEST, nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("team_id", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        ts("created_at"),
        ts("expires_at"),
        ts("used_at", nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name="pk_chat_link_codes"),
    )
    op.create_index("ix_chat_link_codes_expires_at", "chat_link_codes", ["expires_at"])
    op.create_table(
        "chat_seen_signatures",
        sa.Column("digest", DIGEST, nullable=False),
        ts("seen_at"),
        sa.PrimaryKeyConstraint("digest", name="pk_chat_seen_signatures"),
    )
    op.create_index("ix_chat_seen_signatures_seen_at", "chat_seen_signatures", ["seen_at"])


def downgrade() -> None:
    for table in ("chat_seen_signatures", "chat_link_codes", "chat_links"):
        op.drop_table(table)
