"""Schema migrations: Alembic `upgrade head`, run programmatically (no alembic.ini to ship or find)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from keyturn.store.engine import BEGIN_MODE, Backend

MIGRATIONS = Path(__file__).parent / "migrations"

# One lock per schema, so that separate deployments sharing a database do not wait on each other.
_LOCK_KEY = "hashtextextended('keyturn.migrate:' || current_schema(), 0)"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def upgrade(engine: Engine, backend: Backend) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there.

    Several replicas may start at once. On PostgreSQL they queue on a transaction-scoped advisory lock
    and the later ones find the schema current; DDL is transactional there, so a failed migration
    leaves nothing behind. On SQLite, `BEGIN IMMEDIATE` serialises them the same way.
    """
    with engine.connect() as connection:
        if backend == "sqlite":
            connection.execution_options(**{BEGIN_MODE: "IMMEDIATE"})
        driver = connection.connection.driver_connection
        bounded = getattr(driver, "answer_timeout", None)
        try:
            with connection.begin():
                if backend == "postgresql":
                    # A migration may rightly take longer than a request's statement (a new index on a
                    # big table), and a replica waits here while another one migrates: no request-sized
                    # bounds for this one transaction.
                    connection.execute(text("SET LOCAL statement_timeout = 0"))
                    if bounded is not None:
                        driver.answer_timeout = None  # type: ignore[union-attr]
                    connection.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})"))
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            if bounded is not None:
                driver.answer_timeout = bounded  # type: ignore[union-attr]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
