"""Server keys in the database (sealed under a key-encryption key) and the risk tier of each request.

Revision ID: 0007_keys
Revises: 0006_console
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007_keys"
down_revision = "0006_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "server_keys",
        sa.Column("kid", sa.String(100), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("algorithm", sa.String(20), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("sealed", sa.Text(), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_server_keys"),
    )
    op.create_index(
        "uq_server_keys_current",
        "server_keys",
        ["purpose"],
        unique=True,
        sqlite_where=sa.text("state = 'current'"),
        postgresql_where=sa.text("state = 'current'"),
    )
    with op.batch_alter_table("requests") as batch:
        batch.add_column(sa.Column("tier", sa.String(100), nullable=True))
    # Backfill the tier of requests still pending (the metric counts those; decided ones keep NULL).
    requests = sa.table(
        "requests", sa.column("id", sa.String), sa.column("record", sa.Text), sa.column("tier", sa.String)
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(requests.c.id, requests.c.record).where(sa.text("status = 'pending'")))
    for request_id, record in rows.all():
        route = (json.loads(record).get("verdict") or {}).get("route") or {}
        if route.get("tier"):
            conn.execute(sa.update(requests).where(requests.c.id == request_id).values(tier=route["tier"]))


def downgrade() -> None:
    with op.batch_alter_table("requests") as batch:
        batch.drop_column("tier")
    op.drop_index("uq_server_keys_current", table_name="server_keys")
    op.drop_table("server_keys")
