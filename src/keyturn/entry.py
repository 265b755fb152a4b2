"""The `keyturn` console script.

`keyturn hook …` runs on every tool call of a Claude Code session and `keyturn exec …` in front of every
gated command, so they must start fast: they are dispatched here without importing the rest of the CLI
(the store, the server, the policy engine), which would add about a second to each call. Everything else
goes to `keyturn.cli`.
"""

from __future__ import annotations

import sys

import typer


def _hook_only() -> typer.Typer:
    from keyturn.commands import hook

    root = typer.Typer(name="keyturn", no_args_is_help=True, pretty_exceptions_enable=False)
    root.add_typer(hook.app, name="hook", help="Agent hooks: `keyturn hook claude-code`.")
    return root


def _exec_only() -> typer.Typer:
    from keyturn.commands import exec_

    root = typer.Typer(name="keyturn", no_args_is_help=True, pretty_exceptions_enable=False)

    @root.callback()
    def _group() -> None:
        """keyturn (fast path for `keyturn exec`)."""

    root.command("exec", context_settings=exec_.CONTEXT, help=exec_.HELP)(exec_.run)
    return root


_FAST = {"hook": _hook_only, "exec": _exec_only}


def main() -> None:
    fast = _FAST.get(sys.argv[1]) if len(sys.argv) > 1 else None
    if fast is not None:
        fast()(prog_name="keyturn")
        return
    from keyturn.cli import main as full

    full()
