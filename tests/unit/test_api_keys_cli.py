"""`keyturn api-keys`: names are validated, a pasted whole key is reduced to its id and never echoed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from keyturn.cli import app


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_create_list_revoke_with_a_pasted_whole_key(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'k.db'}"
    code, out = run("api-keys", "create", "--agent", "deploy-bot", "--groups", "bots", "--database", database)
    assert code == 0
    key = out.splitlines()[0]
    key_id = "_".join(key.split("_")[:2])
    code, out = run("api-keys", "revoke", key, "--database", database)
    assert code == 0 and out.strip() == f"revoked {key_id}"
    assert key.split("_", 2)[2] not in out  # the secret part is never echoed
    code, out = run("api-keys", "revoke", key_id, "--database", database)
    assert code == 0 and "already revoked at" in out
    code, out = run("api-keys", "revoke", "kt_nosuchid", "--database", database)
    assert code == 1 and "no key kt_nosuchid" in out


def test_agent_names_are_validated(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'k.db'}"
    code, out = run("api-keys", "create", "--agent", "bad name!", "--database", database)
    assert code == 2 and "not a valid agent name" in out
