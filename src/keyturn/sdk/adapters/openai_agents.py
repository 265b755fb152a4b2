"""OpenAI Agents SDK: gate function tools so every call the model makes needs keyturn's approval.

    from agents import Agent
    from keyturn import AsyncGate
    from keyturn.sdk.adapters.openai_agents import keyturn_tool

    gate = AsyncGate()

    @keyturn_tool(gate, action="db.export", resource=lambda p: f"postgres://prod/{p['table']}")
    async def export_table(table: str, rows: int) -> str:
        ...

    agent = Agent(name="ops", tools=[export_table])

The model sees the tool as usual. When it calls it, the call becomes an action request with the call's
arguments as params; the body runs once, after approval, with the approved (possibly narrowed) params.
A denial reaches the model as the tool's output (the reviewer's or the policy's reason), so the model can
adapt instead of failing the run. `guard_function_tool(gate, tool, ...)` does the same for an existing
`FunctionTool` (a tool from another library, an MCP tool converted by the SDK).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from agents import FunctionTool, RunContextWrapper, default_tool_error_function, function_tool
from agents.tool import ToolErrorFunction
from agents.tool_context import ToolContext

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters._common import ActionSpec, FromParams, Params, run_gated

__all__ = ["guard_function_tool", "keyturn_tool"]


def guard_function_tool(
    gate: Gate | AsyncGate,
    tool: FunctionTool,
    *,
    action: str,
    resource: str | FromParams = "",
    justification: str | FromParams = "",
    context: Mapping[str, Any] | Callable[[Params], Mapping[str, Any]] | None = None,
    on_behalf_of: str | None = None,
    failure_error_function: ToolErrorFunction | None = default_tool_error_function,
    on_update: Callable[[dict[str, Any]], Any] | None = None,
) -> FunctionTool:
    """A copy of `tool` whose every invocation is gated by keyturn; the original is left unchanged.

    The wrapped tool receives the approved params as its JSON arguments. If it raises, the request is
    reported failed and the model gets `failure_error_function`'s text (None: the exception fails the
    run). Errors the original tool turns into text itself (its own `failure_error_function`) are, to
    keyturn, a successful run: build the original with `failure_error_function=None` to have them
    reported as failures.
    """
    spec = ActionSpec(action, resource, justification, context or {}, on_behalf_of, on_update)
    inner = tool.on_invoke_tool

    async def invoke(ctx: ToolContext[Any], input_json: str) -> Any:
        params = _parse_arguments(input_json, tool.name)

        async def body(approved: Params) -> Any:
            # The tool validates the approved params exactly as it would validate the model's arguments.
            return await inner(ctx, json.dumps(approved))

        try:
            return await run_gated(gate, spec, params, body, extra_context=_call_context(ctx))
        except Exception as exc:
            if failure_error_function is None:
                raise
            message = failure_error_function(ctx, exc)
            return await message if inspect.isawaitable(message) else message

    gated = copy.copy(tool)
    gated.on_invoke_tool = invoke
    # A tool timeout would start counting while a human decides; the approval wait has its own timeout
    # (the gate's), so the per-invocation timeout is dropped for the gated copy.
    gated.timeout_seconds = None
    return gated


def keyturn_tool(
    gate: Gate | AsyncGate,
    *,
    action: str,
    resource: str | FromParams = "",
    justification: str | FromParams = "",
    context: Mapping[str, Any] | Callable[[Params], Mapping[str, Any]] | None = None,
    on_behalf_of: str | None = None,
    failure_error_function: ToolErrorFunction | None = default_tool_error_function,
    on_update: Callable[[dict[str, Any]], Any] | None = None,
    **function_tool_options: Any,
) -> Callable[[Callable[..., Any]], FunctionTool]:
    """Decorator: `function_tool` + keyturn. Options other than keyturn's go to `agents.function_tool`
    (name_override, description_override, strict_mode…)."""

    def decorate(func: Callable[..., Any]) -> FunctionTool:
        # The inner tool raises instead of answering with an error text, so a failing body is reported
        # to keyturn as failed; the gated tool turns the exception into the model's text afterwards.
        inner = function_tool(func, failure_error_function=None, **function_tool_options)
        return guard_function_tool(
            gate,
            inner,
            action=action,
            resource=resource,
            justification=justification,
            context=context,
            on_behalf_of=on_behalf_of,
            failure_error_function=failure_error_function,
            on_update=on_update,
        )

    return decorate


def _parse_arguments(input_json: str, tool_name: str) -> Params:
    try:
        parsed = json.loads(input_json) if input_json.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"arguments of tool {tool_name} are not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"arguments of tool {tool_name} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _call_context(ctx: RunContextWrapper[Any]) -> dict[str, Any]:
    """What the reviewer should see about the call: which tool, which call, which agent."""
    extra: dict[str, Any] = {"framework": "openai-agents"}
    if isinstance(ctx, ToolContext):
        extra["tool"] = ctx.tool_name
        extra["tool_call_id"] = ctx.tool_call_id
        if ctx.agent is not None:
            extra["agent"] = ctx.agent.name
    return extra
