"""Initial schema: requests, groups, grants, ledger events and head, checkpoints, keys, decisions, API keys.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(100)
DIGEST = sa.String(100)


def ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("requester", sa.Text(), nullable=False),
        sa.Column("on_behalf_of", sa.Text(), nullable=True),
        ts("created_at"),
        ts("updated_at"),
        ts("expires_at", nullable=True),
        ts("next_deadline", nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_requests"),
        sa.UniqueConstraint("requester", "idempotency_key", name="uq_requests_requester_idempotency_key"),
    )
    op.create_index("ix_requests_next_deadline", "requests", ["next_deadline"])
    op.create_index("ix_requests_created_at_id", "requests", ["created_at", "id"])
    op.create_index("ix_requests_status_created_at_id", "requests", ["status", "created_at", "id"])
    op.create_index("ix_requests_requester_created_at_id", "requests", ["requester", "created_at", "id"])

    op.create_table(
        "request_groups",
        sa.Column("request_id", ID, nullable=False),
        sa.Column("group", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "group", name="pk_request_groups"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name="fk_request_groups_request_id_requests", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_request_groups_group", "request_groups", ["group"])

    op.create_table(
        "grants",
        sa.Column("id", ID, nullable=False),
        sa.Column("request_id", ID, nullable=False),
        sa.Column("params_digest", DIGEST, nullable=False),
        ts("issued_at"),
        ts("expires_at"),
        ts("consumed_at", nullable=True),
        sa.Column("consumed_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.ForeignKeyConstraint(
            ["request_id"], ["requests.id"], name="fk_grants_request_id_requests", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_grants_request_id", "grants", ["request_id"])

    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        ts("ts"),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
    )
    op.create_index("ix_events_request_id", "events", ["request_id"])

    ledger_head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_head"),
        sa.CheckConstraint("id = 1", name="ck_ledger_head_single_row"),
    )
    op.bulk_insert(ledger_head, [{"id": 1, "next_seq": 0}])

    op.create_table(
        "checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("key_name", sa.Text(), nullable=False),
        ts("created_at"),
        sa.PrimaryKeyConstraint("size", name="pk_checkpoints"),
    )

    op.create_table(
        "ledger_keys",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        ts("created_at"),
        ts("retired_at", nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_ledger_keys"),
    )

    op.create_table(
        "decision_records",
        sa.Column("id", ID, nullable=False),
        ts("ts"),
        sa.Column("request_id", ID, nullable=True),
        sa.Column("request_digest", DIGEST, nullable=False),
        sa.Column("decision", sa.String(20), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("policy_revision", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_decision_records"),
    )
    op.create_index("ix_decision_records_request_id", "decision_records", ["request_id"])

    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(100), nullable=False),
        sa.Column("principal_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        ts("created_at"),
        ts("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_api_keys"),
    )
    op.create_index("ix_api_keys_principal_id", "api_keys", ["principal_id"])


def downgrade() -> None:
    for table in (
        "api_keys",
        "decision_records",
        "ledger_keys",
        "checkpoints",
        "ledger_head",
        "events",
        "grants",
        "request_groups",
        "requests",
    ):
        op.drop_table(table)
