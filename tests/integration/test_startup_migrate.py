"""A start that finds the schema current reads one row and imports no Alembic; one that does not migrates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from keyturn.store import Store
from keyturn.store.migrate import MIGRATIONS, declared_head, head_revision, stored_revisions

UPGRADE_AND_LIST = """
import sys
from keyturn.store import Store
with Store.open(sys.argv[1]) as store:
    store.upgrade()
print("ALEMBIC:" + str(any(m == "alembic" or m.startswith("alembic.") for m in sys.modules)))
"""


def _upgrade_in_a_fresh_process(database_url: str) -> bool:
    """Whether `Store.upgrade()` imported Alembic, in a new interpreter (as a restarting server)."""
    done = subprocess.run(
        [sys.executable, "-c", UPGRADE_AND_LIST, database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("ALEMBIC:")]
    assert marker, done.stdout + done.stderr
    return marker[-1] == "ALEMBIC:True"


def test_a_current_schema_is_recognised_without_alembic(database_url: str) -> None:
    assert _upgrade_in_a_fresh_process(database_url)  # empty: Alembic creates the schema
    assert not _upgrade_in_a_fresh_process(database_url)  # current: one SELECT, no Alembic
    with Store.open(database_url) as store:
        assert stored_revisions(store.engine, store.backend) == [head_revision()]


def test_a_schema_behind_head_is_migrated(database_url: str) -> None:
    with Store.open(database_url) as store:
        store.upgrade()
        with store.engine.begin() as conn:  # as if the last migration were new to this database
            conn.execute(text("UPDATE alembic_version SET version_num = 'an-older-revision'"))
        assert stored_revisions(store.engine, store.backend) == ["an-older-revision"]
    # Alembic is asked (and refuses a revision it does not know) rather than the check passing it.
    done = subprocess.run(
        [sys.executable, "-c", UPGRADE_AND_LIST, database_url], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "an-older-revision" in done.stderr


def test_the_declared_head_is_alembics() -> None:
    assert declared_head() == head_revision()


def _migration(folder: Path, name: str, revision: str, down: str | None) -> None:
    down_text = "None" if down is None else f'"{down}"'
    (folder / f"{name}.py").write_text(
        f'"""{name}"""\n\nrevision = "{revision}"\ndown_revision = {down_text}\n', encoding="utf-8"
    )


def test_an_unclear_history_is_left_to_alembic(tmp_path: Path) -> None:
    assert declared_head(MIGRATIONS / "versions") is not None
    _migration(tmp_path, "a", "a", None)
    _migration(tmp_path, "b", "b", "a")
    assert declared_head(tmp_path) == "b"
    _migration(tmp_path, "c", "c", "a")  # two heads
    assert declared_head(tmp_path) is None
    (tmp_path / "c.py").write_text(
        'revision = "c"\ndown_revision = ("a", "b")\n', encoding="utf-8"
    )  # a merge
    assert declared_head(tmp_path) is None
