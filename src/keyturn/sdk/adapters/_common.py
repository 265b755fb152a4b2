"""What every framework adapter shares: tool call → action request, approval → tool run, denial → text.

The adapters are thin on purpose: the approval logic (submit, wait, consume the grant, report the result)
lives in the SDK's `Gate.request` / `AsyncGate.request`. This module only adds the three things each
framework needs the same way:

- `ActionSpec`: how one tool call becomes an action request (action, resource, justification, context),
  with the resource and justification optionally computed from the call's params;
- `run_gated` / `run_gated_sync`: run a tool body inside the gate with the approved (possibly edited)
  params; a `Denied` becomes the text the model reads instead of the tool's output;
- `action_for_tool`: a predictable action name for a framework's tool name.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.errors import Denied, KeyturnError

T = TypeVar("T")

Params = dict[str, Any]
FromParams = Callable[[Params], str]
ContextFromParams = Callable[[Params], Mapping[str, Any]]

# Everything but letters, digits, `_` and `-` separates two segments of a dotted action name.
_SEPARATORS = re.compile(r"[^A-Za-z0-9_\-]+")


class AdapterError(KeyturnError):
    """An adapter was configured or called in a way it cannot honour (e.g. a sync call on an AsyncGate)."""


@dataclass(frozen=True)
class ActionSpec:
    """How a tool call becomes an action request.

    `resource`, `justification` and `context` are either fixed values or functions of the call's params,
    e.g. `resource=lambda p: f"postgres://prod/{p['table']}"`.
    """

    action: str
    resource: str | FromParams = ""
    justification: str | FromParams = ""
    context: Mapping[str, Any] | ContextFromParams = field(default_factory=dict)
    on_behalf_of: str | None = None
    # Called with the request's view on each change while it waits (e.g. to print "approve with …").
    on_update: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if not self.action or not isinstance(self.action, str):
            raise AdapterError(f"action must be a non-empty string, got {self.action!r}")

    def request_fields(
        self, params: Params, extra_context: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of `gate.request(...)` for one call with these params."""
        context = dict(self.context(params) if callable(self.context) else self.context)
        context.update(extra_context or {})
        fields: dict[str, Any] = {
            "resource": self.resource(params) if callable(self.resource) else self.resource,
            "params": params,
            "justification": self.justification(params)
            if callable(self.justification)
            else self.justification,
            "context": context,
        }
        if self.on_behalf_of is not None:
            fields["on_behalf_of"] = self.on_behalf_of
        if self.on_update is not None:
            fields["on_update"] = self.on_update
        return fields


def action_for_tool(prefix: str, tool_name: str) -> str:
    """`prefix.tool_name`, lower-cased, with every other separator turned into a dot.

    MCP tools as frameworks name them (`mcp__git__git_commit`) map to `mcp.git.git_commit`, the same
    action the MCP gateway uses for that tool, so one policy rule covers both paths.
    """
    if tool_name.startswith("mcp__"):
        return ".".join(part for part in tool_name.split("__") if part).lower()
    segments = [s for s in _SEPARATORS.split(tool_name) if s]
    if not segments:
        raise AdapterError(f"tool name {tool_name!r} has no usable characters for an action name")
    return ".".join([prefix, *segments]).lower() if prefix else ".".join(segments).lower()


def jsonable_params(arguments: Mapping[str, Any]) -> Params:
    """Tool arguments as JSON-compatible params (pydantic models, dates, enums… become JSON values)."""
    params = to_jsonable_python(dict(arguments), fallback=_unsupported)
    if not isinstance(params, dict):  # pragma: no cover - a dict always serialises to a dict
        raise AdapterError("tool arguments must be a JSON object")
    return params


def _unsupported(value: Any) -> Any:
    raise AdapterError(f"tool argument of type {type(value).__name__} cannot be sent as a JSON param")


class ToolReportedFailure(Exception):  # the failure the tool reported, not an error of ours
    """Raised inside the gate when a tool *returned* an error (e.g. a LangChain ToolMessage with status
    "error") instead of raising, so the request is reported as failed; the adapter still hands the
    tool's own result to the model."""

    def __init__(self, result: Any) -> None:
        super().__init__("the tool reported an error")
        self.result = result


def denial_text(exc: Denied) -> str:
    """What the model reads when the action will not run: the reviewer's or the policy's reason."""
    return f"[keyturn] not performed — {exc.for_model()} (request {exc.request_id})"


async def run_gated(
    gate: Gate | AsyncGate,
    spec: ActionSpec,
    params: Params,
    body: Callable[[Params], Awaitable[T]],
    *,
    failed: Callable[[T], bool] | None = None,
    extra_context: Mapping[str, Any] | None = None,
) -> T | str:
    """Ask approval, run `body(approved_params)` exactly once if granted, report the result.

    Returns the body's result, or the denial text for the model. Other `KeyturnError`s (server
    unreachable, approval timeout, grant refused) propagate: the body did not run (fail closed).
    With a sync `Gate`, the blocking submit/wait/report runs in a worker thread so the event loop of the
    agent stays free; the body itself always runs on the loop.
    """
    fields = spec.request_fields(params, extra_context)
    try:
        if isinstance(gate, AsyncGate):
            async with gate.request(spec.action, **fields) as approval:
                return await _run_body(body, approval.params, failed)
        manager = gate.request(spec.action, **fields)
        granted = await asyncio.to_thread(manager.__enter__)
        try:
            result = await _run_body(body, granted.params, failed)
        except BaseException as exc:
            if not await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__):
                raise
            raise AdapterError("the gate swallowed the tool's exception; no result to return") from exc
        await asyncio.to_thread(manager.__exit__, None, None, None)
        return result
    except Denied as exc:
        return denial_text(exc)
    except ToolReportedFailure as exc:
        reported: T = exc.result
        return reported


async def _run_body(
    body: Callable[[Params], Awaitable[T]], params: Params, failed: Callable[[T], bool] | None
) -> T:
    result = await body(dict(params))
    if failed is not None and failed(result):
        raise ToolReportedFailure(result)
    return result


def run_gated_sync(
    gate: Gate | AsyncGate,
    spec: ActionSpec,
    params: Params,
    body: Callable[[Params], T],
    *,
    failed: Callable[[T], bool] | None = None,
    extra_context: Mapping[str, Any] | None = None,
) -> T | str:
    """The synchronous twin of `run_gated`, for frameworks that call tools synchronously."""
    if isinstance(gate, AsyncGate):
        raise AdapterError(
            "this tool was called synchronously but the adapter was given an AsyncGate; "
            "pass a Gate, or run the agent asynchronously (ainvoke / astream)"
        )
    fields = spec.request_fields(params, extra_context)
    try:
        with gate.request(spec.action, **fields) as approval:
            result = body(dict(approval.params))
            if failed is not None and failed(result):
                raise ToolReportedFailure(result)
            return result
    except Denied as exc:
        return denial_text(exc)
    except ToolReportedFailure as exc:
        reported: T = exc.result
        return reported
