"""The MCP gateway: `keyturn mcp-proxy` fronts any MCP server and gates every tool call through keyturn.

    settings = ProxySettings(name="git", upstream=StdioUpstream("python", ("-m", "mcp_server_git")),
                             gate_url="http://127.0.0.1:8300", api_key=key)
    anyio.run(run_proxy, settings)

See docs/mcp.md for the wiring into agents and example policies.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyturn.mcp.gating import ToolGate
from keyturn.mcp.naming import InvalidServerName, action_for, resource_for
from keyturn.mcp.policy_hints import PolicyHints, denied_outright
from keyturn.mcp.proxy import Proxy, open_proxy, serve_http, serve_stdio
from keyturn.mcp.upstream import HttpUpstream, StdioUpstream, Upstream, UpstreamError


@dataclass(frozen=True)
class ProxySettings:
    name: str  # actions are mcp.NAME.TOOL
    upstream: Upstream
    gate_url: str
    api_key: str
    hide_denied: bool = False
    listen: tuple[str, int] | None = None  # streamable HTTP on (host, port); stdio when None
    listen_token: str = ""  # the bearer token HTTP clients must send (required with `listen`)
    on_behalf_of: str | None = None
    progress_interval: float = 5.0
    timeout: float = 3600.0  # the longest wait for a decision; the request's own ttl usually ends it first


async def run_proxy(settings: ProxySettings) -> None:
    """Start the upstream, then serve MCP until the client disconnects (stdio) or the process is stopped."""
    from keyturn.sdk import AsyncGate

    gate = AsyncGate(settings.gate_url, settings.api_key, timeout=settings.timeout)
    tool_gate = ToolGate(gate, settings.name, settings.progress_interval, settings.on_behalf_of)
    hints = PolicyHints(settings.gate_url, settings.api_key, settings.name) if settings.hide_denied else None
    try:
        async with open_proxy(settings.upstream, tool_gate, hints) as proxy:
            if settings.listen is None:
                await serve_stdio(proxy)
            else:
                await serve_http(proxy, *settings.listen, token=settings.listen_token)
    finally:
        if hints is not None:
            await hints.aclose()
        await gate.close()


__all__ = [
    "HttpUpstream",
    "InvalidServerName",
    "PolicyHints",
    "Proxy",
    "ProxySettings",
    "StdioUpstream",
    "ToolGate",
    "Upstream",
    "UpstreamError",
    "action_for",
    "denied_outright",
    "open_proxy",
    "resource_for",
    "run_proxy",
]
