"""LangChain 1.x / LangGraph: gate tool calls with keyturn, as agent middleware or per tool.

Middleware (every tool of the agent, one place):

    from langchain.agents import create_agent
    from keyturn.sdk.adapters.langchain import KeyturnMiddleware

    agent = create_agent(model, tools=[export_table, get_weather],
                         middleware=[KeyturnMiddleware(gate, tools={"export_table": "db.export"})])

Listed tools map to the action given (a string or an `ActionSpec` with resource/justification); the other
tools become `langchain.<tool_name>` (policy decides: reads can be allowed outright) unless `prefix=None`,
which lets unlisted tools pass ungated. Per tool, without middleware: `gated_tool(gate, tool, action=...)`.

Either way the tool runs once, after approval, with the approved (possibly narrowed) arguments, and a
denial reaches the model as the tool's message (status "error") carrying the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ToolCallRequest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.types import Command

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters._common import (
    ActionSpec,
    AdapterError,
    FromParams,
    Params,
    action_for_tool,
    jsonable_params,
    run_gated,
    run_gated_sync,
)

__all__ = ["KeyturnMiddleware", "gated_tool"]

ToolResult = ToolMessage | Command[Any]


def _tool_failed(result: ToolResult) -> bool:
    # ToolNode turns a handled exception into a ToolMessage with status "error": to keyturn that is a
    # failed run, even though the agent carries on.
    return isinstance(result, ToolMessage) and result.status == "error"


class KeyturnMiddleware(AgentMiddleware[Any, Any, Any]):
    """`wrap_tool_call` / `awrap_tool_call` middleware that puts every tool call through a keyturn gate."""

    def __init__(
        self,
        gate: Gate | AsyncGate,
        tools: Mapping[str, str | ActionSpec] | None = None,
        *,
        prefix: str | None = "langchain",
        sync_gate: Gate | None = None,
    ) -> None:
        """`gate` serves the agent's async path (ainvoke/astream) and, if it is a `Gate`, the sync path
        too; pass `sync_gate` as well when `gate` is an `AsyncGate` and the agent is also run with
        invoke/stream."""
        super().__init__()
        self.gate = gate
        self.sync_gate: Gate | AsyncGate = sync_gate or gate
        self.prefix = prefix
        self.specs = {
            name: spec if isinstance(spec, ActionSpec) else ActionSpec(spec)
            for name, spec in (tools or {}).items()
        }

    def spec_for(self, tool_name: str) -> ActionSpec | None:
        """The action a tool's calls become, or None for a tool that passes ungated."""
        spec = self.specs.get(tool_name)
        if spec is None and self.prefix is not None:
            spec = ActionSpec(action_for_tool(self.prefix, tool_name))
        return spec

    def wrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]
    ) -> ToolResult:
        call = request.tool_call
        spec = self.spec_for(call["name"])
        if spec is None:
            return handler(request)
        outcome = run_gated_sync(
            self.sync_gate,
            spec,
            jsonable_params(call["args"]),
            lambda approved: handler(request.override(tool_call={**call, "args": approved})),
            failed=_tool_failed,
            extra_context=_call_context(request),
        )
        return _as_tool_result(outcome, request)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        call = request.tool_call
        spec = self.spec_for(call["name"])
        if spec is None:
            return await handler(request)

        async def body(approved: Params) -> ToolResult:
            return await handler(request.override(tool_call={**call, "args": approved}))

        outcome = await run_gated(
            self.gate,
            spec,
            jsonable_params(call["args"]),
            body,
            failed=_tool_failed,
            extra_context=_call_context(request),
        )
        return _as_tool_result(outcome, request)


def _as_tool_result(outcome: ToolResult | str, request: ToolCallRequest) -> ToolResult:
    if isinstance(outcome, str):  # the denial text: the model reads it as the tool's (failed) answer
        call = request.tool_call
        return ToolMessage(content=outcome, name=call["name"], tool_call_id=call["id"] or "", status="error")
    return outcome


def _call_context(request: ToolCallRequest) -> dict[str, Any]:
    return {
        "framework": "langchain",
        "tool": request.tool_call["name"],
        "tool_call_id": request.tool_call["id"],
    }


def gated_tool(
    gate: Gate | AsyncGate,
    tool: BaseTool,
    *,
    action: str,
    resource: str | FromParams = "",
    justification: str | FromParams = "",
    context: Mapping[str, Any] | Callable[[Params], Mapping[str, Any]] | None = None,
    on_behalf_of: str | None = None,
    sync_gate: Gate | None = None,
    on_update: Callable[[dict[str, Any]], Any] | None = None,
) -> StructuredTool:
    """A tool with the same name, description and argument schema as `tool`, gated by keyturn.

    Tools with injected arguments (ToolRuntime, InjectedState…) or an artifact response need the agent's
    runtime, which only middleware sees: use `KeyturnMiddleware` for those.
    """
    if tool._injected_args_keys:
        raise AdapterError(
            f"tool {tool.name!r} has injected arguments {sorted(tool._injected_args_keys)}; "
            "gate it with KeyturnMiddleware instead of gated_tool"
        )
    if tool.response_format != "content":
        raise AdapterError(f"tool {tool.name!r} returns content and artifact; gate it with KeyturnMiddleware")
    spec = ActionSpec(action, resource, justification, context or {}, on_behalf_of, on_update)
    extra = {"framework": "langchain", "tool": tool.name}
    blocking_gate: Gate | AsyncGate = sync_gate or gate

    def run(**arguments: Any) -> Any:
        return run_gated_sync(
            blocking_gate, spec, jsonable_params(arguments), tool.invoke, extra_context=extra
        )

    async def arun(**arguments: Any) -> Any:
        return await run_gated(gate, spec, jsonable_params(arguments), tool.ainvoke, extra_context=extra)

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=tool.name,
        description=tool.description,
        args_schema=tool.tool_call_schema,
        infer_schema=False,
        return_direct=tool.return_direct,
    )
