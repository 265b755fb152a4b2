"""`keyturn hook claude-code`: the real command, run as Claude Code runs it (hook JSON on stdin, decision JSON
on stdout), against a real server, with a human approving or denying from another thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_adapters_common import AGENT, Reviewer, latest, shared_server

from support.live import keyturn_executable

CLAUDE_POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
rules:
  - name: reading files is free
    match: {action: claude.read}
    decision: allow
  - name: shell commands need an sre
    match: {action: claude.bash}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.command]
  - name: no writes to /etc
    match: {action: claude.write, resource: "/etc/*"}
    decision: deny
    reason: nothing writes to /etc from an agent
"""


def hook_input(tool_name: str, tool_input: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "session_id": "sess-1",
        "transcript_path": "/tmp/transcript.jsonl",
        "cwd": "/work/repo",
        "permission_mode": "default",
        "hook_event_name": "PreToolUse",
        "tool_name": tool_name,
        "tool_input": tool_input,
        "tool_use_id": "toolu_01",
        **extra,
    }


def run_hook(
    stdin: str | dict[str, Any],
    *,
    url: str,
    key: str | None,
    args: tuple[str, ...] = (),
    via_cli: bool = False,
) -> Any:
    """Run the hook as Claude Code would. `via_cli` goes through the `keyturn` console script; otherwise the
    quicker-starting `python -m keyturn.commands.hook`, which is the same typer command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env["KEYTURN_URL"] = url
    if key is not None:
        env["KEYTURN_API_KEY"] = key
    completed = subprocess.run(
        [keyturn_executable(), "hook", "claude-code", *args]
        if via_cli
        else [sys.executable, "-m", "keyturn.commands.hook", "claude-code", *args],
        input=stdin if isinstance(stdin, str) else json.dumps(stdin),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def decision(completed: Any) -> dict[str, Any]:
    output: dict[str, Any] = json.loads(completed.stdout)["hookSpecificOutput"]
    assert output["hookEventName"] == "PreToolUse"
    return output


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from shared_server(tmp_path_factory, CLAUDE_POLICY)


def test_policy_allow_is_an_allow(server: Any) -> None:
    out = decision(
        run_hook(
            hook_input("Read", {"file_path": "/work/repo/README.md"}),
            url=server.url,
            key=server.tokens[AGENT],
            via_cli=True,  # once through the real `keyturn` entry point, as settings.json names it
        )
    )
    assert out["permissionDecision"] == "allow" and "allowed by policy" in out["permissionDecisionReason"]
    assert "updatedInput" not in out
    record = latest(server, "claude.read")
    assert record["resource"] == "/work/repo/README.md" and record["context"]["cwd"] == "/work/repo"
    # The grant was consumed at hand-over; the result says so rather than pretending to know the outcome.
    assert record["status"] == "succeeded"
    assert any("handed over to Claude Code" in json.dumps(e["payload"]) for e in record["history"])


def test_review_waits_for_approval_and_hands_over_the_edited_input(server: Any) -> None:
    reviewer = Reviewer(
        server, "user:alice@example.com", "claude.bash", "approve", "no -f", {"command": "rm -r build"}
    )
    reviewer.start()
    completed = run_hook(
        hook_input("Bash", {"command": "rm -rf build", "description": "clean the build"}),
        url=server.url,
        key=server.tokens[AGENT],
    )
    request_id = reviewer.join()
    out = decision(completed)
    assert out["permissionDecision"] == "allow" and request_id in out["permissionDecisionReason"]
    assert out["updatedInput"] == {"command": "rm -r build", "description": "clean the build"}
    record = latest(server, "claude.bash")
    assert record["resource"] == "/work/repo" and record["justification"] == "clean the build"


def test_a_reviewer_denial_is_a_deny_with_the_reason(server: Any) -> None:
    reviewer = Reviewer(server, "user:bob@example.com", "claude.bash", "deny", "not on a Friday")
    reviewer.start()
    completed = run_hook(
        hook_input("Bash", {"command": "kubectl apply -f prod.yaml"}),
        url=server.url,
        key=server.tokens[AGENT],
    )
    reviewer.join()
    out = decision(completed)
    assert out["permissionDecision"] == "deny"
    assert "denied by user:bob@example.com: not on a Friday" in out["permissionDecisionReason"]


def test_policy_deny_and_mcp_tool_names(server: Any) -> None:
    out = decision(
        run_hook(
            hook_input("Write", {"file_path": "/etc/passwd", "content": "x"}),
            url=server.url,
            key=server.tokens[AGENT],
        )
    )
    assert out["permissionDecision"] == "deny" and "nothing writes to /etc" in out["permissionDecisionReason"]
    # An MCP tool becomes the MCP gateway's action; unknown → default review → no decision in 1 s → deny.
    completed = run_hook(
        hook_input("mcp__git__git_commit", {"message": "wip"}),
        url=server.url,
        key=server.tokens[AGENT],
        args=("--timeout", "1"),
    )
    out = decision(completed)
    assert out["permissionDecision"] == "deny" and "no decision in time" in out["permissionDecisionReason"]
    record = latest(server, "mcp.git.git_commit")
    assert record["status"] == "cancelled"  # it can never be approved and run later


def test_fails_closed_on_bad_input_missing_key_and_unreachable_server(server: Any, tmp_path: Path) -> None:
    key = server.tokens[AGENT]
    out = decision(run_hook("{not json", url=server.url, key=key))
    assert out["permissionDecision"] == "deny" and "line 1, column 2" in out["permissionDecisionReason"]
    out = decision(run_hook(hook_input("Bash", "ls"), url=server.url, key=key))  # type: ignore[arg-type]
    assert out["permissionDecision"] == "deny" and "tool_input" in out["permissionDecisionReason"]
    out = decision(run_hook(hook_input("Read", {"file_path": "/x"}), url=server.url, key=None))
    assert out["permissionDecision"] == "deny" and "API key" in out["permissionDecisionReason"]
    out = decision(run_hook(hook_input("Read", {"file_path": "/x"}), url="http://127.0.0.1:9", key=key))
    assert out["permissionDecision"] == "deny" and "unreachable" in out["permissionDecisionReason"]
    out = decision(run_hook(hook_input("Read", {"file_path": "/x"}), url=server.url, key="kt_wrong"))
    assert out["permissionDecision"] == "deny" and "fail closed" in out["permissionDecisionReason"]


def test_other_events_get_no_decision(server: Any) -> None:
    completed = run_hook(
        hook_input("Read", {}, hook_event_name="PostToolUse"), url=server.url, key=server.tokens[AGENT]
    )
    assert completed.stdout == "" and "only PreToolUse" in completed.stderr
