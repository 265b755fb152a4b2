"""Claude Code and the Claude Agent SDK: every tool call Claude makes becomes a keyturn action request.

Two entry points share one decision:

- `keyturn hook claude-code` (see `keyturn.commands.hook`), a PreToolUse *command hook* for Claude Code:
  it reads the hook's JSON from stdin and prints `{"hookSpecificOutput": {"hookEventName": "PreToolUse",
  "permissionDecision": "allow"|"deny", "permissionDecisionReason": …, "updatedInput"?: …}}`;
- `keyturn_can_use_tool(gate)` for `ClaudeAgentOptions(can_use_tool=…)`, returning the SDK's
  `PermissionResultAllow(updated_input=…)` / `PermissionResultDeny(message=…)`; and
  `keyturn_pre_tool_use_hook(gate)`, the same decision as an SDK `HookMatcher` callback.

Mapping: tool `Bash` → action `claude.bash`, `Edit` → `claude.edit`, MCP tool `mcp__git__git_commit` →
`mcp.git.git_commit` (the MCP gateway's name for it); params = the tool input, unchanged; resource = the
file path, URL or working directory the tool acts on; context = session, tool-use id, cwd, permission mode.

Policy allow → allow. Review → wait for the decision: approved → allow, with the approved input as
`updatedInput` when a reviewer narrowed it. Denied, expired, no decision within the timeout, server
unreachable, malformed input → deny with the reason (fail closed). Nothing here ever answers "ask".

Limitation, by design of the hook protocol: Claude Code, not keyturn, runs the tool after "allow", so the
grant is consumed when the decision is handed over and the result is reported as succeeded with the detail
"handed over to Claude Code"; keyturn does not observe the tool's real outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters._common import action_for_tool, denial_text
from keyturn.sdk.errors import ApprovalTimeout, Denied, KeyturnError, Unreachable

__all__ = [
    "HANDOVER_DETAIL",
    "ClaudeDecision",
    "decide",
    "decide_sync",
    "describe_tool_call",
    "keyturn_can_use_tool",
    "keyturn_pre_tool_use_hook",
]

HANDOVER_DETAIL = "handed over to Claude Code at allow; the tool's own outcome is not observed by keyturn"

# Tools whose input names the thing they act on; the first key present becomes the resource.
_RESOURCE_KEYS = ("file_path", "notebook_path", "path", "url")


@dataclass(frozen=True)
class ToolCall:
    """One tool call as keyturn submits it."""

    action: str
    resource: str
    params: dict[str, Any]
    justification: str
    context: dict[str, Any]


@dataclass(frozen=True)
class ClaudeDecision:
    behavior: Literal["allow", "deny"]
    reason: str
    updated_input: dict[str, Any] | None = None  # the approved input, when a reviewer edited it
    request_id: str | None = None

    def hook_output(self) -> dict[str, Any]:
        """Claude Code's PreToolUse hook output (hooks reference: PreToolUse decision control)."""
        specific: dict[str, Any] = {
            "hookEventName": "PreToolUse",
            "permissionDecision": self.behavior,
            "permissionDecisionReason": self.reason,
        }
        if self.updated_input is not None:
            specific["updatedInput"] = self.updated_input
        return {"hookSpecificOutput": specific}


def describe_tool_call(
    tool_name: str,
    tool_input: Mapping[str, Any],
    *,
    prefix: str = "claude",
    context: Mapping[str, Any] | None = None,
    actions: Mapping[str, str] | None = None,
) -> ToolCall:
    """The action request for one Claude tool call (see the module docstring for the mapping).

    `actions` overrides the action of named tools, e.g. `{"Bash": "shell.exec"}` so that the policy's rules
    for shell commands (which read `params.command`) apply to Claude's Bash tool too.
    """
    params = dict(tool_input)
    resource = next(
        (str(params[k]) for k in _RESOURCE_KEYS if isinstance(params.get(k), str) and params[k]), ""
    )
    extra = {k: v for k, v in (context or {}).items() if v is not None}
    if not resource and tool_name == "Bash":
        resource = str(extra.get("cwd") or "")
    justification = str(params.get("description") or "")  # Bash carries the model's own description
    action = (actions or {}).get(tool_name) or action_for_tool(prefix, tool_name)
    return ToolCall(action, resource, params, justification, {"agent": "claude", "tool": tool_name, **extra})


def _allowed(approval: Any, call: ToolCall) -> ClaudeDecision:
    how = "allowed by policy" if (approval.view or {}).get("allowed_without_review") else "approved"
    if approval.edited:
        how += " with edited input"
    return ClaudeDecision(
        "allow",
        f"keyturn: {how} (request {approval.request_id})",
        dict(approval.params) if approval.edited or approval.params != call.params else None,
        approval.request_id,
    )


def _refused(exc: KeyturnError) -> ClaudeDecision:
    if isinstance(exc, Denied):
        return ClaudeDecision("deny", denial_text(exc), None, exc.request_id)
    if isinstance(exc, ApprovalTimeout):
        return ClaudeDecision(
            "deny",
            f"[keyturn] not performed — no decision in time; request {exc.request_id} was cancelled. "
            "Ask a human to approve it and try again.",
            None,
            exc.request_id,
        )
    if isinstance(exc, Unreachable):
        return ClaudeDecision(
            "deny",
            f"[keyturn] not performed — the keyturn server is unreachable ({exc}); "
            "tool calls are denied until it is back (fail closed)",
        )
    return ClaudeDecision("deny", f"[keyturn] not performed — {type(exc).__name__}: {exc} (fail closed)")


def _request_kwargs(call: ToolCall, timeout: float | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "resource": call.resource,
        "params": call.params,
        "justification": call.justification,
        "context": call.context,
    }
    if timeout is not None:
        kwargs["timeout"] = timeout
    return kwargs


def decide_sync(gate: Gate, call: ToolCall, *, timeout: float | None = None) -> ClaudeDecision:
    """Ask keyturn about one tool call and wait for the decision (the command hook's path)."""
    try:
        with gate.request(call.action, **_request_kwargs(call, timeout)) as approval:
            approval.report(True, detail=HANDOVER_DETAIL)
            return _allowed(approval, call)
    except KeyturnError as exc:
        return _refused(exc)


async def decide(gate: Gate | AsyncGate, call: ToolCall, *, timeout: float | None = None) -> ClaudeDecision:
    """`decide_sync` for async callers; a sync `Gate` waits in a worker thread."""
    if not isinstance(gate, AsyncGate):
        return await asyncio.to_thread(decide_sync, gate, call, timeout=timeout)
    try:
        async with gate.request(call.action, **_request_kwargs(call, timeout)) as approval:
            await approval.report(True, detail=HANDOVER_DETAIL)
            return _allowed(approval, call)
    except KeyturnError as exc:
        return _refused(exc)


def keyturn_can_use_tool(
    gate: Gate | AsyncGate,
    *,
    prefix: str = "claude",
    actions: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Callable[[str, dict[str, Any], Any], Awaitable[Any]]:
    """A `can_use_tool` callback for `ClaudeAgentOptions`: keyturn decides each permission prompt.

    Note the SDK calls `can_use_tool` only for calls its own permission rules would prompt for; to gate
    every call regardless of `allowed_tools` / permission mode, register `keyturn_pre_tool_use_hook`.
    """
    from claude_agent_sdk import PermissionResultAllow, PermissionResultDeny, ToolPermissionContext

    async def can_use_tool(
        tool_name: str, tool_input: dict[str, Any], context: ToolPermissionContext
    ) -> PermissionResultAllow | PermissionResultDeny:
        extra = {
            "tool_use_id": context.tool_use_id,
            "agent_id": context.agent_id,
            "framework": "claude-agent-sdk",
        }
        decision = await decide(
            gate,
            describe_tool_call(tool_name, tool_input, prefix=prefix, context=extra, actions=actions),
            timeout=timeout,
        )
        if decision.behavior == "allow":
            # Always the approved input: what runs is exactly what the grant was bound to.
            return PermissionResultAllow(updated_input=decision.updated_input or dict(tool_input))
        return PermissionResultDeny(message=decision.reason)

    return can_use_tool


def keyturn_pre_tool_use_hook(
    gate: Gate | AsyncGate,
    *,
    prefix: str = "claude",
    actions: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Callable[[Any, str | None, Any], Awaitable[Any]]:
    """A PreToolUse hook callback for `ClaudeAgentOptions(hooks={"PreToolUse": [HookMatcher(hooks=[…])]})`:
    the same decision as the `keyturn hook claude-code` command, in process."""

    async def pre_tool_use(hook_input: Any, tool_use_id: str | None, _context: Any) -> Any:
        if hook_input.get("hook_event_name") != "PreToolUse":
            return {}
        decision = await decide(
            gate, call_from_hook_input(hook_input, prefix=prefix, actions=actions), timeout=timeout
        )
        return decision.hook_output()

    return pre_tool_use


class HookInputError(ValueError):
    """The PreToolUse hook input is not what Claude Code sends; the field is named."""


def call_from_hook_input(
    hook_input: Mapping[str, Any], *, prefix: str = "claude", actions: Mapping[str, str] | None = None
) -> ToolCall:
    """The tool call of a PreToolUse hook input (`tool_name`, `tool_input` and the session fields)."""
    tool_name = hook_input.get("tool_name")
    if not isinstance(tool_name, str) or not tool_name:
        raise HookInputError("hook input: field 'tool_name' must be a non-empty string")
    tool_input = hook_input.get("tool_input", {})
    if not isinstance(tool_input, dict):
        raise HookInputError("hook input: field 'tool_input' must be a JSON object")
    context = {
        key: hook_input.get(key)
        for key in ("session_id", "tool_use_id", "cwd", "permission_mode", "transcript_path", "agent_id")
    }
    context["framework"] = "claude-code"
    return describe_tool_call(tool_name, tool_input, prefix=prefix, context=context, actions=actions)
