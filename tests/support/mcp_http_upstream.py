"""A small MCP server over streamable HTTP, built on the SDK's `MCPServer` (FastMCP in mcp 1.x).

    python tests/support/mcp_http_upstream.py --port 8123 --token s3cret --journal /tmp/sent.jsonl

Every request must carry `X-Upstream-Token: <token>`; anything else gets 401, so a test can show that only
the proxy (which holds the token) reaches it. `send_message` appends to the journal file, so a test can see
whether (and with which arguments) a gated call really ran.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send


def build(journal: Path) -> MCPServer:
    server = MCPServer(
        "notes-upstream", version="1.0.0", instructions="A test server with notes and messages."
    )

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, title="Add numbers"))
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, open_world_hint=True))
    def send_message(to: str, body: str) -> str:
        """Send a message to someone."""
        with journal.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"to": to, "body": body}) + "\n")
        return f"sent to {to}"

    @server.tool()
    async def enable_extra(ctx: Context) -> str:
        """Add the tool `extra` and announce the change."""

        def extra() -> str:
            """A tool that appears later."""
            return "extra"

        server.add_tool(extra, name="extra")
        await ctx.session.send_tool_list_changed()
        return "extra enabled"

    @server.resource("notes://today", mime_type="text/plain")
    def today() -> str:
        return "water the plants"

    @server.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Say hello to {name}."

    return server


class RequireToken:
    """401 unless the request carries the shared token (the upstream credential the agent must never hold)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: dict[bytes, bytes] = dict(scope["headers"])
            if headers.get(b"x-upstream-token") != self.token:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"missing or wrong X-Upstream-Token"})
                return
        await self.app(scope, receive, send)


async def main(args: Any) -> None:
    server = build(Path(args.journal))
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(
        RequireToken(app, args.token), host="127.0.0.1", port=args.port, log_level="warning"
    )
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--journal", required=True)
    anyio.run(main, parser.parse_args())
