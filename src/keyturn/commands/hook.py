"""`keyturn hook claude-code`: a Claude Code PreToolUse command hook backed by keyturn.

Claude Code runs the command for each tool call with the hook input as JSON on stdin; the command prints
the decision as JSON on stdout and exits 0. Every failure (bad input, no API key, server unreachable, no
decision in time) is printed as a "deny" with the reason: the hook fails closed, never open.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True)


@app.callback()
def hooks() -> None:
    """Hooks for agent tools. Claude Code runs one per tool call, so `python -m keyturn.commands.hook
    claude-code` is the quicker way to start it (it skips loading the rest of the CLI)."""


@app.command("claude-code")
def claude_code(
    action_prefix: Annotated[
        str,
        typer.Option(
            help="actions are PREFIX.<tool> (claude.bash, claude.edit…); MCP tools are mcp.<server>.<tool>"
        ),
    ] = "claude",
    timeout: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="seconds to wait for a human decision; set the hook's own `timeout` in Claude Code's "
            "settings higher than this",
        ),
    ] = 300.0,
    action: Annotated[
        list[str] | None,
        typer.Option(
            "--action", help="TOOL=ACTION overrides one tool's action, e.g. Bash=shell.exec (repeatable)"
        ),
    ] = None,
    url: Annotated[str | None, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="KEYTURN_API_KEY", help="the agent's API key")
    ] = None,
) -> None:
    """PreToolUse hook for Claude Code: reads the hook input on stdin, prints the permission decision.

    Configure it in .claude/settings.json:
    {"hooks": {"PreToolUse": [{"matcher": "*", "hooks": [{"type": "command",
      "command": "keyturn hook claude-code", "timeout": 330}]}]}}
    """
    actions: dict[str, str] = {}
    for item in action or []:
        tool, sep, name = item.partition("=")
        if not sep or not tool or not name:
            typer.echo(f"--action expects TOOL=ACTION, got {item!r}", err=True)
            raise typer.Exit(2)
        actions[tool] = name
    output = run_claude_code_hook(
        sys.stdin.read(), prefix=action_prefix, actions=actions, timeout=timeout, url=url, api_key=api_key
    )
    if output is not None:
        typer.echo(json.dumps(output, ensure_ascii=False))


def run_claude_code_hook(
    raw: str,
    *,
    prefix: str,
    actions: dict[str, str],
    timeout: float,
    url: str | None,
    api_key: str | None,
) -> dict[str, Any] | None:
    """The hook's output for one stdin payload; None (print nothing) for events other than PreToolUse."""
    from keyturn.sdk import Gate, KeyturnError
    from keyturn.sdk.adapters.claude import ClaudeDecision, HookInputError, call_from_hook_input, decide_sync

    try:
        hook_input = json.loads(raw)
    except json.JSONDecodeError as exc:
        return _deny(f"hook input is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
    if not isinstance(hook_input, dict):
        return _deny("hook input must be a JSON object")
    event = hook_input.get("hook_event_name")
    if event != "PreToolUse":
        # Registered for another event by mistake: say nothing rather than decide something unasked.
        typer.echo(f"keyturn hook claude-code: ignoring hook event {event!r} (only PreToolUse)", err=True)
        return None
    try:
        call = call_from_hook_input(hook_input, prefix=prefix, actions=actions)
    except (HookInputError, KeyturnError) as exc:
        return _deny(str(exc))
    try:
        gate = Gate(url, api_key, timeout=timeout)
    except KeyturnError as exc:
        return _deny(f"keyturn is not configured: {exc}")
    try:
        decision: ClaudeDecision = decide_sync(gate, call, timeout=timeout)
    finally:
        gate.close()
    return decision.hook_output()


def _deny(reason: str) -> dict[str, Any]:
    return {
        "hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny",
            "permissionDecisionReason": f"[keyturn] not performed — {reason} (fail closed)",
        }
    }


if __name__ == "__main__":  # `python -m keyturn.commands.hook claude-code`: the same command, faster to start
    app(prog_name="keyturn hook")
