"""Schema migrations: Alembic `upgrade head`, run programmatically (no alembic.ini to ship or find).

Every start of the server migrates, and nearly every start finds the schema current. Alembic's machinery
(its script directory, migration context and the DDL modules of every dialect) takes longer to import
than the rest of a start's database work, so `upgrade` first compares the `alembic_version` row with the
head revision read from the migration files themselves, and imports Alembic only when they differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text

from keyturn.store.engine import BEGIN_MODE, Backend

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"

# One lock per schema, so that separate deployments sharing a database do not wait on each other.
_LOCK_KEY = "hashtextextended('keyturn.migrate:' || current_schema(), 0)"

# `revision = "0008_outbox"` / `down_revision = "0007_keys"` (or None) at the top level of a migration.
_REVISION_LINE = re.compile(
    r"""^(revision|down_revision)\s*(?::\s*[^=]+)?=\s*(?:"([^"]*)"|'([^']*)'|None)\s*$"""
)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The head revision as Alembic computes it (the authority `declared_head` is tested against)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def declared_head(versions: Path = MIGRATIONS / "versions") -> str | None:
    """The head revision read from the migration files without Alembic: the one revision that no other
    names as its `down_revision`. None when the files do not say it plainly (a merge revision, a tuple,
    a revision computed in code, several heads): then only Alembic can tell, and `upgrade` asks it."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        found: dict[str, str | None] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _REVISION_LINE.match(line)
            if match:
                found[match[1]] = match[2] if match[2] is not None else match[3]
        if "revision" not in found or "down_revision" not in found or found["revision"] is None:
            return None
        revisions.add(found["revision"])
        if found["down_revision"] is not None:
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def upgrade(engine: Engine, backend: Backend) -> None:
    """Bring the schema to the newest revision; a no-op when it is already there.

    Several replicas may start at once. On PostgreSQL they queue on a transaction-scoped advisory lock
    and the later ones find the schema current; DDL is transactional there, so a failed migration
    leaves nothing behind. On SQLite, `BEGIN IMMEDIATE` serialises them the same way. Reading a current
    version without the lock is safe for the same reason: a version row is committed with its DDL.
    """
    head = declared_head()
    if head is not None and stored_revisions(engine, backend) == [head]:
        return
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
                _run_alembic_upgrade(connection)
        finally:
            if bounded is not None:
                driver.answer_timeout = bounded  # type: ignore[union-attr]


def _run_alembic_upgrade(connection: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def stored_revisions(engine: Engine, backend: Backend) -> list[str]:
    """The revisions `alembic_version` holds (none on an empty database), read with plain SQL."""
    exists = (
        "SELECT to_regclass('alembic_version') IS NOT NULL"
        if backend == "postgresql"
        else "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
    )
    with engine.connect() as connection:
        if not connection.execute(text(exists)).scalar_one():
            return []
        return sorted(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
