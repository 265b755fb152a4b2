"""Alembic environment for keyturn. Run through `keyturn.store.Store.upgrade()` (or `keyturn db upgrade`),
which hands over a connection inside a transaction holding the migration lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from keyturn.store.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("keyturn migrations run through keyturn.store.Store.upgrade(), with a connection")

context.configure(connection=connection, target_metadata=metadata, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
