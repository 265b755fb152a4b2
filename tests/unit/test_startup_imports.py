"""Start-up: each entry point imports what it needs and nothing else (issue #12 "Start-up", #13 §5).

Each probe runs the real console-script entry point (`keyturn.entry.main`, or `keyturn.cli.main` for the
full CLI) in a fresh interpreter and lists what it left in `sys.modules`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError

from keyturn import cli

PROBE = """
import sys
entry, argv, stdin = sys.argv[1], sys.argv[2:], sys.stdin
sys.argv = ["keyturn", *argv]
if entry == "entry":
    from keyturn.entry import main
else:
    from keyturn.cli import main
try:
    main()
except SystemExit:
    pass
print("MODULES:" + ",".join(sorted(sys.modules)))
"""

# What no CLI command that talks to a server (or only prints help) may load: the storage layer and its
# migrations, the server, the policy engine's CEL binding and the REPL its package drags in.
SERVER_SIDE = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "cel", "prompt_toolkit", "keyturn.store")


def _loaded(entry: str, *argv: str, stdin: str = "", env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, entry, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("MODULES:")]
    assert marker, done.stdout + done.stderr
    return set(marker[-1].removeprefix("MODULES:").split(","))


def _present(modules: set[str], *names: str) -> set[str]:
    return {m for m in modules if any(m == n or m.startswith(n + ".") for n in names)}


def test_keyturn_help_loads_no_subcommand() -> None:
    loaded = _loaded("entry", "--help")
    assert (
        _present(loaded, *SERVER_SIDE, "httpx", "keyturn.commands", "keyturn.config", "pydantic_settings")
        == set()
    )


@pytest.mark.parametrize("entry", ["entry", "cli"])
def test_exec_help_loads_nothing_server_side(entry: str) -> None:
    # `cli`: the full CLI (`python -m keyturn.cli exec --help`) is as light as the fast path for it.
    loaded = _loaded(entry, "exec", "--help")
    assert "keyturn.commands.exec_" in loaded
    assert _present(loaded, *SERVER_SIDE, "keyturn.policy", "keyturn.server") == set()


def test_claude_code_hook_loads_nothing_server_side() -> None:
    # A PreToolUse without an API key: the hook builds its call and denies (fail closed) without a server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    hook_input = '{"hook_event_name": "PreToolUse", "tool_name": "Read", "tool_input": {"file_path": "/x"}}'
    loaded = _loaded("entry", "hook", "claude-code", stdin=hook_input, env=env)
    assert "keyturn.sdk.adapters.claude" in loaded
    assert _present(loaded, *SERVER_SIDE, "keyturn.policy", "keyturn.server", "keyturn.cli") == set()


def test_a_subcommand_loads_its_own_module_only() -> None:
    loaded = _loaded("cli", "policy", "--help")
    assert "keyturn.commands.policy" in loaded
    assert _present(loaded, "keyturn.commands.ledger", "keyturn.commands.requests", "keyturn.server") == set()


def test_the_server_loads_no_cli_alembic_or_repl() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, keyturn.server.app; print(','.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(done.stdout.strip().split(","))
    assert "keyturn.server.app" in loaded
    assert (
        _present(loaded, "alembic", "prompt_toolkit", "cel.cli", "keyturn.cli", "keyturn.commands") == set()
    )


def test_cel_is_complete_without_its_repl() -> None:
    from keyturn.policy.cel import cel

    assert cel.evaluate("1 + 2 == 3", {}) is True


def test_every_listed_help_line_is_the_commands_own() -> None:
    """`keyturn --help` lists `COMMANDS`' lines without importing; each is the loaded command's own help."""
    for name, spec in cli.COMMANDS.items():
        command = cli.load(name, spec)
        own = " ".join((command.help or "").split("\n\n")[0].split())
        assert own == spec.help, name
        assert (command.hidden, command.deprecated) == (spec.hidden, spec.deprecated), name


def test_help_is_the_same_lazy_or_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    group = typer.main.get_command(cli.app)
    assert isinstance(group, cli.LazyGroup)

    def root_help() -> str:
        with group.make_context("keyturn", ["--help"], resilient_parsing=True) as ctx:
            ctx.get_help()  # typer's rich help prints itself
        return capsys.readouterr().out

    lazy = root_help()
    assert group.commands == {}  # listing them loaded none
    for name, spec in cli.COMMANDS.items():
        group.commands[name] = cli.load(name, spec)
    assert lazy == root_help()
    assert "serve" in lazy and "approve" in lazy
    assert "│ keys " not in lazy  # the deprecated alias stays hidden


def test_users_file_dummy_hash() -> None:
    """The literal an unknown user's password is checked against is a real hash with today's parameters,
    so a miss costs what a wrong password costs."""
    from keyturn.identity.users import _DUMMY_HASH

    hasher = PasswordHasher()
    assert not hasher.check_needs_rehash(_DUMMY_HASH)
    with pytest.raises(VerifyMismatchError):
        hasher.verify(_DUMMY_HASH, "anything")
