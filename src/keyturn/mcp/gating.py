"""One gated `tools/call`: ask keyturn, keep the client informed, forward exactly what was approved.

The order of events for a call is the SDK's: submit the request; if it is pending, wait (this module sends MCP
progress notifications every few seconds and on every state change, so the client neither times out nor
leaves its user guessing); consume the one-time grant; only then call the upstream, with the APPROVED params
(a reviewer may have narrowed them); report succeeded or failed. Every way of not getting a grant — denied,
expired, cancelled, keyturn unreachable, no decision in time — ends as a tool result with `isError: true`
and a sentence the model can act on, and the upstream is never called.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import httpx
import mcp.types as types

from keyturn.mcp.naming import action_for, call_context, resource_for
from keyturn.sdk import AsyncGate, Denied, KeyturnError

log = logging.getLogger("keyturn.mcp")

CLEANUP_SECONDS = 10.0  # the longest a cancelled call may spend telling keyturn it was abandoned


class ProgressSink(Protocol):
    """Where progress goes: the downstream request's `report_progress` (a no-op without a progressToken)."""

    async def __call__(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None: ...


# forward(approved_arguments, progress) -> the upstream result; `progress` relays the upstream progress
Forward = Callable[[dict[str, Any], ProgressSink], Awaitable[types.CallToolResult]]


def error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def output_digest(result: types.CallToolResult) -> str:
    """`sha256:` of the canonical JSON of the result: the ledger proves what came back without storing it."""
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def describe_wait(view: dict[str, Any]) -> str:
    """'waiting for approval of <id>: still needed 1 from sre (expires …)' from a request view."""
    status = view.get("status", "pending")
    request_id = view.get("id", "")
    if status != "pending":
        return f"keyturn request {request_id}: {status}"
    needed = ", ".join(str(item) for item in view.get("still_needed") or []) or "a reviewer"
    expires = view.get("expires_at")
    return f"waiting for approval of keyturn request {request_id}: still needed {needed}" + (
        f" (expires {expires})" if expires else ""
    )


class _Progress:
    """Monotonic progress notifications: a heartbeat while pending, plus one on every state change."""

    def __init__(self, sink: ProgressSink, interval: float) -> None:
        self.sink = sink
        self.interval = interval
        self.count = 0
        self.message = "submitted to keyturn for approval"
        self.done = anyio.Event()
        self.request_id: str | None = None  # known from the first state change (pending)

    async def send(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        self.count += 1
        try:
            await self.sink(float(self.count), None, self.message)
        except Exception:  # a client that went away must not break the approval bookkeeping
            log.debug("progress notification not delivered", exc_info=True)

    async def relay(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """The upstream's own progress during the call, renumbered to stay monotonic for the client."""
        of = f"/{total:g}" if total is not None else ""
        await self.send(message or f"upstream progress {progress:g}{of}")

    async def on_update(self, view: dict[str, Any]) -> None:
        self.request_id = str(view.get("id") or "") or self.request_id
        await self.send(describe_wait(view))

    async def heartbeat(self) -> None:
        while not self.done.is_set():
            with anyio.move_on_after(self.interval):
                await self.done.wait()
            if not self.done.is_set():
                await self.send()


@dataclass
class ToolGate:
    """Turns tool calls of one upstream server (`name`) into keyturn action requests."""

    gate: AsyncGate
    server: str
    progress_interval: float = 5.0
    on_behalf_of: str | None = None

    async def call(
        self,
        tool_name: str,
        arguments: dict[str, Any],
        *,
        tool: types.Tool | None,
        client: types.Implementation | None,
        progress: ProgressSink,
        forward: Forward,
    ) -> types.CallToolResult:
        ticker = _Progress(progress, self.progress_interval)
        outcome: types.CallToolResult | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker.heartbeat)
            # An error is re-raised below, outside the task group, so that it is not wrapped in a group.
            try:
                outcome = await self._gated(tool_name, arguments, tool, client, ticker, forward)
            except Exception as exc:
                failure = exc
            finally:
                ticker.done.set()
        if failure is not None:
            raise failure
        assert outcome is not None
        return outcome

    async def _gated(
        self,
        tool_name: str,
        arguments: dict[str, Any],
        tool: types.Tool | None,
        client: types.Implementation | None,
        ticker: _Progress,
        forward: Forward,
    ) -> types.CallToolResult:
        result: types.CallToolResult | None = None
        request_id: str | None = None
        granted = False
        try:
            async with self.gate.request(
                action_for(self.server, tool_name),
                resource=resource_for(self.server, tool_name),
                params=arguments,
                context=call_context(self.server, tool_name, tool, client),
                on_behalf_of=self.on_behalf_of,
                on_update=ticker.on_update,
            ) as approval:
                ticker.done.set()
                granted, request_id = True, approval.request_id
                result = await forward(dict(approval.params), ticker.relay)
                await approval.report(
                    not result.is_error,
                    output_digest=output_digest(result),
                    # not the result's text: tool output can carry data that must not reach the ledger
                    detail="the tool returned isError" if result.is_error else "",
                )
        except anyio.get_cancelled_exc_class():
            # The client cancelled the call (notifications/cancelled) or went away.
            await self._after_cancellation(request_id or ticker.request_id, granted, result is not None)
            raise
        except Denied as exc:
            return error_result(exc.for_model())
        except KeyturnError as exc:
            if result is not None:
                # The upstream already ran; only the outcome report failed. The model must see what happened.
                log.warning("keyturn request %s: the outcome could not be reported: %s", request_id, exc)
                return result
            return error_result(
                f"keyturn could not approve this call, so it was not run (failing closed): {_plain(exc)}"
            )
        assert result is not None  # the approval block either runs forward() or raises
        return result

    async def _after_cancellation(self, request_id: str | None, granted: bool, ran: bool) -> None:
        """Make an abandoned call final in keyturn: cancel it if still pending, else record the failure.

        The MCP SDK cancels a handler through an anyio cancel scope, which cancels every later `await` in
        the task too, so the SDK's own clean-up on cancellation cannot get through; this one is shielded.
        """
        if request_id is None or ran:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_SECONDS):
            try:
                if not granted:
                    await self.gate.cancel(request_id, "the MCP client cancelled the tool call")
                else:
                    await self.gate.report(
                        request_id, False, detail="the MCP client cancelled the call as it ran"
                    )
            except (KeyturnError, httpx.HTTPError) as exc:
                # e.g. decided in the meantime: then the grant was never consumed, and nothing ran
                log.info("keyturn request %s: clean-up after cancellation: %s", request_id, exc)


def _plain(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
