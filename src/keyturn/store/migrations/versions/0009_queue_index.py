"""The review queue's index: (group, created_at, request_id) of every pending request, backfilled.

Revision ID: 0009_queue_index
Revises: 0008_outbox
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_queue_index"
down_revision = "0008_outbox"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_route_groups",
        sa.Column("group", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("group", "created_at", "request_id", name="pk_pending_route_groups"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name="fk_pending_route_groups_request_id_requests",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_pending_route_groups_request_id", "pending_route_groups", ["request_id"])
    # One INSERT … SELECT: the groups of every request still pending, with its created_at copied as stored
    # (the same text on SQLite, the same timestamptz on PostgreSQL), so the keyset order is unchanged.
    op.execute(
        'INSERT INTO pending_route_groups ("group", created_at, request_id) '
        'SELECT rg."group", r.created_at, r.id FROM request_groups rg '
        "JOIN requests r ON r.id = rg.request_id WHERE r.status = 'pending'"
    )


def downgrade() -> None:
    op.drop_index("ix_pending_route_groups_request_id", table_name="pending_route_groups")
    op.drop_table("pending_route_groups")
