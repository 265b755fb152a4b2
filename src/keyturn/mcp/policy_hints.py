"""`--hide-denied`: leave out of `tools/list` the tools that policy refuses whatever the arguments.

For each tool the proxy dry-runs `mcp.NAME.TOOL` with `POST /v1/evaluate` (records nothing), with empty
params and the same context a call would carry. A tool is hidden only when

  * the verdict is `deny`, and
  * at least one matching deny rule is unconditional: it has no `when` expression (the verdict's rule entry
    has `conditional: false` and carries no evaluation `error`).

A deny that depends on a `when` (on params, context or the time of day) may not hold for a real call, so
such tools stay listed and their calls are gated as usual. This is only a convenience for the model: hiding
never replaces the gate, and a call to a hidden tool is still submitted and denied by policy. When the
evaluation cannot be made (keyturn unreachable, an error answer) the tool stays listed, for the same reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import mcp.types as types

from keyturn.mcp.naming import action_for, call_context, resource_for

log = logging.getLogger("keyturn.mcp")


def denied_outright(verdict: dict[str, Any]) -> bool:
    """Whether an `/v1/evaluate` answer denies every call: a deny from a rule without a `when`."""
    if verdict.get("decision") != "deny":
        return False
    for rule in verdict.get("rules") or []:
        if rule.get("decision") != "deny" or not rule.get("matched", True) or rule.get("error"):
            continue
        if not rule.get("conditional", "`when`" in str(rule.get("why", ""))):
            return True
    return False


class PolicyHints:
    """Dry-run evaluations against the keyturn server, with the proxy's own credentials."""

    def __init__(self, url: str, api_key: str | None, server: str, *, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.server = server
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def is_hidden(self, tool: types.Tool) -> bool:
        body = {
            "action": action_for(self.server, tool.name),
            "resource": resource_for(self.server, tool.name),
            "params": {},
            "context": call_context(self.server, tool.name, tool, None),
        }
        try:
            response = await self.http.post("/v1/evaluate", json=body)
            response.raise_for_status()
            verdict = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot evaluate %s for --hide-denied, keeping it listed: %s", body["action"], exc)
            return False
        return isinstance(verdict, dict) and denied_outright(verdict)

    async def visible(self, tools: Sequence[types.Tool]) -> list[types.Tool]:
        """The tools to list, in their order; evaluated concurrently."""
        hidden = [False] * len(tools)

        async def check(index: int, tool: types.Tool) -> None:
            hidden[index] = await self.is_hidden(tool)

        async with anyio.create_task_group() as tasks:
            for index, tool in enumerate(tools):
                tasks.start_soon(check, index, tool)
        return [tool for tool, hide in zip(tools, hidden, strict=True) if not hide]
