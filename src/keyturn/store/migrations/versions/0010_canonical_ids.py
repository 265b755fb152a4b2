"""Principal ids stored before ids had one canonical form, folded to it.

Since issue #13 every entry point folds a principal id (`keyturn.model.fold_principal_id`: NFKC, case
folding, punycode domains decoded), and the request JSON folds the ids it holds when it is read back. The
plain columns that queries filter on were written as they came: `user:Alice@Example.com` in
`requests.requester` would miss "my requests" for `user:alice@example.com`, and an idempotency key reused
under the other spelling would not be recognised. This migration folds those columns with the very function
the server uses.

Ledger events are not touched: they are signed history, and an auditor reads the id as it was recorded
(docs/ledger.md). A fold that would make two rows collide on a unique key (the same agent under two spellings
reusing one idempotency key) leaves the later row as it was and says so in the log.

Revision ID: 0010_canonical_ids
Revises: 0009_queue_index
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from keyturn.model import fold_principal_id

revision = "0010_canonical_ids"
down_revision = "0009_queue_index"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# (table, primary-key columns, principal-id columns)
PRINCIPAL_COLUMNS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("requests", ("id",), ("requester", "on_behalf_of")),
    ("grants", ("id",), ("consumed_by",)),
    ("api_keys", ("key_id",), ("principal_id",)),
    ("console_sessions", ("id_hash",), ("principal_id", "revoked_by")),
    ("passkeys", ("credential_id",), ("principal_id",)),
    ("chat_links", ("provider", "team_id", "user_id"), ("principal_id",)),
)


def upgrade() -> None:
    conn = op.get_bind()
    for table_name, keys, columns in PRINCIPAL_COLUMNS:
        table = sa.table(table_name, *(sa.column(name) for name in (*keys, *columns)))
        for row in conn.execute(sa.select(table)).mappings().all():
            where = sa.and_(*(table.c[key] == row[key] for key in keys))
            for name in columns:
                if row[name] is None or fold_principal_id(row[name]) == row[name]:
                    continue
                try:
                    with conn.begin_nested():  # one column at a time: a collision keeps only that one
                        conn.execute(
                            sa.update(table).where(where).values({name: fold_principal_id(row[name])})
                        )
                except sa.exc.IntegrityError:
                    log.warning(
                        "%s %s: folding %s would collide with another row; left as stored",
                        table_name,
                        tuple(row[key] for key in keys),
                        name,
                    )


def downgrade() -> None:
    pass  # the unfolded spellings are not kept: a folded id is the same principal
