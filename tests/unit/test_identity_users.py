"""The users file: validation with file:line:column, personal tokens, live reload, `keyturn users …`."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keyturn.commands.users import app as users_app
from keyturn.identity import AuthenticationError, UsersFileError
from keyturn.identity.authenticator import Authenticator
from keyturn.identity.users import UsersFile, add_user_token, read_users
from keyturn.model import PrincipalKind, Role
from keyturn.redact import looks_like_secret

EXAMPLE = Path(__file__).parents[2] / "examples" / "users.yaml"

USERS = """\
# Humans of the test.
# Second comment line.
users:
  - id: user:alice@example.com
    name: Alice
    groups: [sre]
    tokens: []
  - id: user:erin@example.com
    name: Erin
    groups: []
    roles: [auditor]
"""


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(USERS, encoding="utf-8")
    return path


def touch_later(path: Path) -> None:
    """Make sure a rewrite is seen as a change even on filesystems with coarse mtimes."""
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_token_round_trip_and_principal(users_path: Path) -> None:
    token = add_user_token(users_path, "user:alice@example.com", "laptop")
    assert re.fullmatch(r"ktu_[A-Za-z0-9]{8}_[A-Za-z0-9_-]{43}", token)
    assert looks_like_secret(token)
    text = users_path.read_text(encoding="utf-8")
    assert token not in text and token.split("_", 2)[2] not in text  # only the hash is written
    assert text.startswith("# Humans of the test.\n# Second comment line.\n")  # header comments kept

    alice = Authenticator(users=UsersFile(users_path)).authenticate(f"Bearer {token}", None)
    assert alice.id == "user:alice@example.com" and alice.kind is PrincipalKind.HUMAN
    assert alice.groups == {"sre"} and alice.roles == frozenset() and alice.display_name == "Alice"

    stored = read_users(users_path).users[0].tokens[0]
    assert stored.name == "laptop" and token.startswith(stored.id + "_")


def test_roles_are_kept_apart(users_path: Path) -> None:
    token = add_user_token(users_path, "user:erin@example.com")
    erin = UsersFile(users_path).authenticate(token)
    assert erin.roles == {Role.AUDITOR} and erin.groups == frozenset()  # auditor approves nothing


def test_wrong_and_unknown_tokens_are_refused(users_path: Path) -> None:
    token = add_user_token(users_path, "user:alice@example.com")
    users = UsersFile(users_path)
    token_id, secret = token.rsplit("_", 1)[0], token.split("_", 2)[2]
    for bad in (
        f"{token_id}_{secret[::-1]}",
        "ktu_ZZZZZZZZ_" + secret,
        token[:-5],
        "kt_" + token.removeprefix("ktu_"),  # an API key shape is not a user token
    ):
        with pytest.raises(AuthenticationError, match=r"^invalid or revoked user token$"):
            users.authenticate(bad)


def test_tokens_added_and_removed_while_running(users_path: Path) -> None:
    users = UsersFile(users_path)  # the server's view, loaded once
    auth = Authenticator(users=users)
    first = add_user_token(users_path, "user:alice@example.com", "one")
    assert auth.authenticate(None, first).id == "user:alice@example.com"  # picked up without restart
    second = add_user_token(users_path, "user:alice@example.com", "two")

    document = yaml.safe_load(users_path.read_text(encoding="utf-8"))
    document["users"][0]["tokens"] = [t for t in document["users"][0]["tokens"] if t["name"] != "one"]
    users_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    touch_later(users_path)
    with pytest.raises(AuthenticationError, match="invalid or revoked"):
        auth.authenticate(None, first)
    assert auth.authenticate(None, second).id == "user:alice@example.com"


def test_a_broken_edit_fails_closed_until_fixed(users_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = add_user_token(users_path, "user:alice@example.com")
    users = UsersFile(users_path)
    good = users_path.read_text(encoding="utf-8")
    users_path.write_text(good.replace("groups: [sre]", "groups: [sre"), encoding="utf-8")
    touch_later(users_path)
    with pytest.raises(AuthenticationError):
        users.authenticate(token)
    assert "users file not reloaded" in caplog.text and str(users_path) in caplog.text
    users_path.write_text(good, encoding="utf-8")
    touch_later(users_path)
    assert users.authenticate(token).id == "user:alice@example.com"
    users_path.unlink()
    with pytest.raises(AuthenticationError):
        users.authenticate(token)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("users:\n  - id: alice\n", r"users\.yaml:2:9: users\.0\.id: String should match pattern"),
        ("users:\n  - id: user:a@x\n    roles: [approver]\n", r":3:13: users\.0\.roles\.0: Input should be"),
        (
            "users:\n  - id: user:a@x\n    group: [sre]\n",
            r":3:12: users\.0\.group: Extra inputs are not permitted",
        ),
        ("users:\n  - id: user:a@x\n  - id: user:a@x\n", r"user user:a@x is listed twice"),
        ("users: [\n", r"users\.yaml:2:1: invalid YAML"),
        ("- just a list\n", r"users\.yaml:1:1: expected a mapping"),
        (
            "users:\n  - id: user:a@x\n    tokens:\n      - {id: ktu_abcdefgh, hash: md5:1, created: now}\n",
            r":4:34: users\.0\.tokens\.0\.hash: String should match",
        ),
    ],
)
def test_invalid_files_name_file_line_column_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsersFileError, match=expected):
        UsersFile(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match=r"missing\.yaml: cannot read the users file"):
        read_users(tmp_path / "missing.yaml")


def test_add_token_to_an_unknown_user(users_path: Path) -> None:
    before = users_path.read_bytes()
    with pytest.raises(UsersFileError, match=r"no user 'user:mallory@example\.com'"):
        add_user_token(users_path, "user:mallory@example.com")
    assert users_path.read_bytes() == before


def test_concurrent_add_token_loses_nothing(users_path: Path) -> None:
    tokens: list[str] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        token = add_user_token(users_path, "user:alice@example.com", f"t{i}")
        with lock:
            tokens.append(token)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    users = UsersFile(users_path)
    assert len(read_users(users_path).users[0].tokens) == 8
    assert all(users.authenticate(t).id == "user:alice@example.com" for t in tokens)


def test_the_example_users_file_is_valid() -> None:
    document = read_users(EXAMPLE)
    assert {u.id for u in document.users} >= {"user:alice@example.com", "user:erin@example.com"}


def test_cli_add_token_and_list(users_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        users_app, ["add-token", "--users-file", str(users_path), "user:alice@example.com", "--name", "ci"]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert UsersFile(users_path).authenticate(token).id == "user:alice@example.com"

    listed = runner.invoke(users_app, ["list", "--users-file", str(users_path)])
    assert listed.exit_code == 0
    assert "user:alice@example.com" in listed.stdout and "auditor" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout

    unknown = runner.invoke(users_app, ["add-token", "--users-file", str(users_path), "user:nobody@x"])
    assert unknown.exit_code == 1 and "no user 'user:nobody@x'" in unknown.stderr
