"""The console script runs the per-call commands (`hook`, `exec`) without loading the rest of the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
sys.argv = ["keyturn", *sys.argv[1:]]
from keyturn.entry import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("sqlalchemy", "fastapi", "keyturn.store", "keyturn.policy", "keyturn.cli")
               if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


def _loaded(*argv: str) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("HEAVY:")]
    assert marker, done.stdout + done.stderr
    return marker[-1].removeprefix("HEAVY:"), done.stdout


@pytest.mark.parametrize(
    ("argv", "usage"),
    [(("hook", "claude-code", "--help"), "hook claude-code"), (("exec", "--help"), "keyturn exec")],
)
def test_per_call_commands_start_without_the_server_code(argv: tuple[str, ...], usage: str) -> None:
    heavy, out = _loaded(*argv)
    assert usage in out
    assert heavy == ""


def test_everything_else_goes_to_the_full_cli() -> None:
    heavy, out = _loaded("--help")
    assert "keyturn.cli" in heavy
    for command in ("serve", "approve", "policy", "ledger", "mcp-proxy", "exec", "hook"):
        assert command in out
