"""Claude Agent SDK adapter: the `can_use_tool` callback and the PreToolUse hook callback, called exactly as
the SDK calls them (its own `ToolPermissionContext`, hook input and result types), against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from claude_agent_sdk import (
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    PreToolUseHookInput,
    ToolPermissionContext,
)
from test_adapters_common import AGENT, Reviewer, latest, shared_server
from test_hook_claude_code import CLAUDE_POLICY

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters.claude import keyturn_can_use_tool, keyturn_pre_tool_use_hook


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from shared_server(tmp_path_factory, CLAUDE_POLICY)


def permission_context(tool_use_id: str = "toolu_01") -> ToolPermissionContext:
    return ToolPermissionContext(signal=None, suggestions=[], tool_use_id=tool_use_id)


async def test_can_use_tool_allow_approve_with_edit_and_deny(server: Any) -> None:
    gate = AsyncGate(server.url, server.tokens[AGENT], timeout=30)
    can_use_tool = keyturn_can_use_tool(gate)

    allowed = await can_use_tool("Read", {"file_path": "/repo/a.py"}, permission_context("t-read"))
    assert isinstance(allowed, PermissionResultAllow) and allowed.updated_input == {"file_path": "/repo/a.py"}
    assert latest(server, "claude.read")["context"]["tool_use_id"] == "t-read"

    reviewer = Reviewer(
        server, "user:alice@example.com", "claude.bash", "approve", "", {"command": "make test"}
    )
    reviewer.start()
    approved = await can_use_tool("Bash", {"command": "make test deploy"}, permission_context())
    reviewer.join()
    assert isinstance(approved, PermissionResultAllow)
    assert approved.updated_input == {
        "command": "make test"
    }  # Claude runs what was approved, not what it asked

    reviewer = Reviewer(server, "user:bob@example.com", "claude.bash", "deny", "ask the on-call first")
    reviewer.start()
    denied = await can_use_tool("Bash", {"command": "terraform destroy"}, permission_context())
    reviewer.join()
    assert isinstance(denied, PermissionResultDeny)
    assert "ask the on-call first" in denied.message and not denied.interrupt
    await gate.close()


async def test_can_use_tool_with_a_sync_gate_times_out_closed(server: Any) -> None:
    gate = Gate(server.url, server.tokens[AGENT], timeout=30)
    can_use_tool = keyturn_can_use_tool(gate, timeout=1)
    denied = await can_use_tool("Bash", {"command": "sleep 1"}, permission_context())
    assert isinstance(denied, PermissionResultDeny) and "no decision in time" in denied.message
    assert latest(server, "claude.bash")["status"] == "cancelled"
    gate.close()


async def test_pre_tool_use_hook_callback(server: Any) -> None:
    gate = AsyncGate(server.url, server.tokens[AGENT], timeout=30)
    hook = keyturn_pre_tool_use_hook(gate)
    HookMatcher(matcher="*", hooks=[hook])  # the shape the SDK registers
    hook_input: PreToolUseHookInput = {
        "session_id": "s",
        "transcript_path": "/tmp/t",
        "cwd": "/repo",
        "hook_event_name": "PreToolUse",
        "tool_name": "Write",
        "tool_input": {"file_path": "/etc/hosts", "content": "1.2.3.4 x"},
        "tool_use_id": "toolu_9",
    }
    output = await hook(hook_input, "toolu_9", {"signal": None})
    specific = output["hookSpecificOutput"]
    assert (
        specific["permissionDecision"] == "deny"
        and "nothing writes to /etc" in specific["permissionDecisionReason"]
    )
    await gate.close()
