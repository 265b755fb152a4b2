"""`keyturn serve` start-up problems: exit status 2, one line on stderr naming the problem, nothing created.

Each case runs the real command in an empty working directory with the default paths (`./keyturn.db`,
`./keyturn-data`), so "nothing created" is checked where a start would create them.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from keyturn.signing_keys import new_kek
from support.live import DEFAULT_POLICY, free_port, keyturn_executable

GOOD_USERS = "users:\n  - {id: 'user:alice@example.com', groups: [sre]}\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(DEFAULT_POLICY, encoding="utf-8")
    return tmp_path


def serve(workdir: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    before = sorted(os.listdir(workdir))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    port = ("--port", str(free_port())) if "--port" not in args else ()
    finished = subprocess.run(
        [keyturn_executable(), "serve", *port, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
        env={**clean, **(env or {})},
    )
    assert sorted(os.listdir(workdir)) == before, "a failed start left files behind"
    return finished.returncode, finished.stderr.strip().splitlines()


def one_line(code: int, lines: list[str]) -> str:
    assert code == 2
    assert len(lines) == 1, "\n".join(lines)
    assert "Traceback" not in lines[0]
    assert lines[0].startswith("keyturn serve: ")
    return lines[0]


def test_a_policy_with_a_syntax_error_is_named_with_file_and_line(workdir: Path) -> None:
    (workdir / "policy.yaml").write_text("version: 1\nrules: [\n", encoding="utf-8")
    line = one_line(*serve(workdir))
    assert "policy.yaml:3" in line and "policy" in line


def test_a_policy_with_several_problems_is_still_one_line(workdir: Path) -> None:
    (workdir / "policy.yaml").write_text(
        "version: 1\nrules:\n  - {name: a, match: {action: x}, decision: maybe}\n"
        "  - {name: b, match: {action: y}, decision: perhaps}\n",
        encoding="utf-8",
    )
    line = one_line(*serve(workdir))
    assert "policy.yaml:3" in line and "more" in line


def test_a_missing_policy_file(workdir: Path) -> None:
    (workdir / "policy.yaml").unlink()
    line = one_line(*serve(workdir))
    assert "policy.yaml" in line and "No such file" in line


def test_a_bad_users_file_is_named_with_file_line_and_field(workdir: Path) -> None:
    (workdir / "users.yaml").write_text("users:\n  - {id: alice}\n", encoding="utf-8")
    line = one_line(*serve(workdir, "--users-file", "users.yaml"))
    assert "users.yaml:2" in line and "id" in line


def test_a_missing_users_file(workdir: Path) -> None:
    line = one_line(*serve(workdir, "--users-file", "absent.yaml"))
    assert "absent.yaml" in line


def test_an_unreachable_database_is_named_without_its_password(workdir: Path) -> None:
    url = f"postgresql://keyturn:s3cret-pw@127.0.0.1:{free_port()}/keyturn"
    line = one_line(*serve(workdir, "--database", url, env={"KEYTURN_KEY_ENCRYPTION_KEY": new_kek()}))
    assert "unreachable" in line and "127.0.0.1" in line
    assert "s3cret-pw" not in line


def test_a_sqlite_database_in_a_missing_directory(workdir: Path) -> None:
    line = one_line(*serve(workdir, "--database", "sqlite:///no/such/dir/keyturn.db"))
    assert "database sqlite:///no/such/dir/keyturn.db" in line


def test_a_port_in_use_is_found_before_anything_is_created(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(*serve(workdir, "--port", str(port)))
    assert f"127.0.0.1:{port}" in line and "already in use" in line


def test_an_unknown_setting_in_the_config_file(workdir: Path) -> None:
    (workdir / "keyturn.yaml").write_text("prot: 8300\n", encoding="utf-8")
    line = one_line(*serve(workdir, "--config", "keyturn.yaml"))
    assert "keyturn.yaml" in line and "prot" in line


def test_a_bad_setting_in_the_environment(workdir: Path) -> None:
    line = one_line(*serve(workdir, env={"KEYTURN_TIMER_INTERVAL": "-1"}))
    assert "timer_interval" in line


def test_a_key_encryption_key_that_is_not_32_bytes(workdir: Path) -> None:
    line = one_line(*serve(workdir, env={"KEYTURN_KEY_ENCRYPTION_KEY": "too-short"}))
    assert "KEYTURN_KEY_ENCRYPTION_KEY" in line and "32 random bytes" in line


def test_a_missing_key_encryption_key_file(workdir: Path) -> None:
    (workdir / "keyturn.yaml").write_text("key_encryption_key_file: kek.txt\n", encoding="utf-8")
    line = one_line(*serve(workdir, "--config", "keyturn.yaml"))
    assert "kek.txt" in line and "cannot read" in line


@pytest.fixture
def empty_schema() -> Iterator[str]:
    from conftest import fresh_postgres_schema

    with fresh_postgres_schema() as url:
        yield url


@pytest.mark.postgresql
def test_postgresql_without_a_key_encryption_key_changes_nothing_in_the_database(
    workdir: Path, empty_schema: str
) -> None:
    line = one_line(*serve(workdir, "--database", empty_schema))
    assert "KEYTURN_KEY_ENCRYPTION_KEY" in line and "replica" in line
    schema = make_url(empty_schema).query["options"]
    assert isinstance(schema, str)
    base = make_url(empty_schema).difference_update_query(["options"]).render_as_string(hide_password=False)
    with psycopg.connect(base) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            (schema.removeprefix("-csearch_path="),),
        ).fetchone()
    assert tables == (0,)
