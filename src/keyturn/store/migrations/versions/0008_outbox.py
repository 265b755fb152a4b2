"""The outbox of channel deliveries, the references of posted messages, and targets disabled by a 410.

Revision ID: 0008_outbox
Revises: 0007_keys
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_outbox"
down_revision = "0007_keys"
branch_labels = None
depends_on = None

ID = sa.String(100)


def ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("request_id", ID, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("event_type", sa.String(50), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        ts("scheduled_at"),
        ts("due_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("leased_by", sa.Text(), nullable=True),
        ts("leased_until", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=True),
        ts("created_at"),
        ts("updated_at"),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("id", name="uq_outbox_id"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name="fk_outbox_request_id_requests", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_outbox_status_due_at", "outbox", ["status", "due_at"])
    op.create_index("ix_outbox_request_id_target_seq", "outbox", ["request_id", "target", "seq"])

    op.create_table(
        "message_refs",
        sa.Column("request_id", ID, nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("conversation", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("extra", sa.Text(), nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("request_id", "target", name="pk_message_refs"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name="fk_message_refs_request_id_requests", ondelete="CASCADE"
        ),
    )

    op.create_table(
        "channel_targets",
        sa.Column("target", sa.String(300), nullable=False),
        ts("disabled_at"),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("target", name="pk_channel_targets"),
    )


def downgrade() -> None:
    op.drop_table("channel_targets")
    op.drop_table("message_refs")
    op.drop_index("ix_outbox_request_id_target_seq", table_name="outbox")
    op.drop_index("ix_outbox_status_due_at", table_name="outbox")
    op.drop_table("outbox")
