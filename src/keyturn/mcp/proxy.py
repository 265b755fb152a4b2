"""The proxy: one MCP server facing the agent, one MCP client session facing the upstream server.

Built on the low-level `mcp.server.lowlevel.Server`, which hands requests over as they come so that the
upstream's tool list, schemas, resources and prompts pass through untouched. The proxy advertises exactly
the upstream's capabilities (what the upstream does not serve, the proxy does not either), relays the
upstream's list-changed and resource-updated notifications to every connected client, and sends every
`tools/call` through `keyturn.mcp.gating.ToolGate`.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError

from keyturn.mcp.gating import ProgressSink, ToolGate
from keyturn.mcp.policy_hints import PolicyHints
from keyturn.mcp.upstream import Upstream, connect

log = logging.getLogger("keyturn.mcp")

Context = ServerRequestContext[Any, Any]


class ProxyServer(Server[Any]):
    """A low-level server whose initialisation advertises the upstream's list-changed notifications.

    The streamable-HTTP session manager calls `create_initialization_options()` without arguments, so the
    notification options live on the server rather than being passed at `run()`.
    """

    notification_options: NotificationOptions | None = None

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or self.notification_options, experimental_capabilities, extensions
        )


class Downstream:
    """The connected clients, to relay the upstream's notifications to (one on stdio, several over HTTP)."""

    def __init__(self) -> None:
        self.sessions: list[ServerSession] = []

    def add(self, session: ServerSession) -> None:
        self.sessions.append(session)

    async def broadcast(self, notification: types.ServerNotification) -> None:
        for session in list(self.sessions):
            try:
                await session.send_notification(notification)
            except Exception:  # that client is gone: stop relaying to it
                log.debug("dropping a disconnected client", exc_info=True)
                self.sessions.remove(session)


@dataclass
class Proxy:
    """The request handlers of the downstream server, over an initialised upstream session."""

    upstream: ClientSession
    tool_gate: ToolGate
    downstream: Downstream
    hints: PolicyHints | None = None

    def __post_init__(self) -> None:
        self._tools: dict[str, types.Tool] = {}
        self._tools_complete = False

    # --- upstream notifications -------------------------------------------------------------------------

    async def on_upstream_message(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            log.warning("upstream transport error: %s", message)
            return
        if isinstance(message, types.ToolListChangedNotification):
            self._tools_complete = False
        if isinstance(
            message,
            types.ToolListChangedNotification
            | types.ResourceListChangedNotification
            | types.PromptListChangedNotification
            | types.ResourceUpdatedNotification,
        ):
            await self.downstream.broadcast(message)

    # --- tools ------------------------------------------------------------------------------------------

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        result = await self.upstream.list_tools(params=params)
        self._remember(result.tools, complete=params is None and result.next_cursor is None)
        if self.hints is not None:
            result = result.model_copy(update={"tools": await self.hints.visible(result.tools)})
        return result

    def _remember(self, tools: list[types.Tool], *, complete: bool) -> None:
        if complete:
            self._tools = {}
        self._tools.update({tool.name: tool for tool in tools})
        self._tools_complete = self._tools_complete or complete

    async def _tool(self, name: str) -> types.Tool | None:
        """The upstream's definition of a tool (for its annotations), listing the upstream when unknown."""
        if name not in self._tools or not self._tools_complete:
            cursor: str | None = None
            tools: list[types.Tool] = []
            while True:
                page = await self.upstream.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
            self._remember(tools, complete=True)
        return self._tools.get(name)

    async def call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = await self._tool(params.name)
        if tool is None:
            # Nothing to run upstream either: a protocol error, as the upstream itself would answer.
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        client = ctx.session.client_params.client_info if ctx.session.client_params else None

        async def forward(arguments: dict[str, Any], progress: ProgressSink) -> types.CallToolResult:
            return await self.upstream.call_tool(params.name, arguments, progress_callback=progress)

        return await self.tool_gate.call(
            params.name,
            dict(params.arguments or {}),
            tool=tool,
            client=client,
            progress=ctx.session.report_progress,
            forward=forward,
        )

    # --- resources, prompts, completion: straight through ----------------------------------------------

    async def list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await self.upstream.list_resources(params=params)

    async def list_resource_templates(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return await self.upstream.list_resource_templates(params=params)

    async def read_resource(
        self, ctx: Context, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await self.upstream.read_resource(params.uri)

    async def subscribe(self, ctx: Context, params: types.SubscribeRequestParams) -> types.EmptyResult:
        request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=params.uri))
        return await self.upstream.send_request(request, types.EmptyResult)

    async def unsubscribe(self, ctx: Context, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=params.uri))
        return await self.upstream.send_request(request, types.EmptyResult)

    async def list_prompts(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        return await self.upstream.list_prompts(params=params)

    async def get_prompt(self, ctx: Context, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        return await self.upstream.get_prompt(params.name, params.arguments)

    async def complete(self, ctx: Context, params: types.CompleteRequestParams) -> types.CompleteResult:
        context = params.context.arguments if params.context else None
        return await self.upstream.complete(params.ref, params.argument.model_dump(), context)

    async def on_initialized(self, ctx: Context, params: types.NotificationParams) -> None:
        self.downstream.add(ctx.session)

    # --- the downstream server --------------------------------------------------------------------------

    def build_server(self) -> ProxyServer:
        """A low-level server offering what the upstream offers, under the upstream's name."""
        capabilities = self.upstream.server_capabilities or types.ServerCapabilities()
        handlers: dict[str, Any] = {}
        if capabilities.tools is not None:
            handlers.update(on_list_tools=self.list_tools, on_call_tool=self.call_tool)
        if capabilities.resources is not None:
            handlers.update(
                on_list_resources=self.list_resources,
                on_list_resource_templates=self.list_resource_templates,
                on_read_resource=self.read_resource,
            )
            if capabilities.resources.subscribe:
                handlers.update(
                    on_subscribe_resource=self.subscribe, on_unsubscribe_resource=self.unsubscribe
                )
        if capabilities.prompts is not None:
            handlers.update(on_list_prompts=self.list_prompts, on_get_prompt=self.get_prompt)
        if capabilities.completions is not None:
            handlers.update(on_completion=self.complete)
        info = self.upstream.server_info or types.Implementation(name=self.tool_gate.server, version="")
        server = ProxyServer(
            info.name,
            version=info.version,
            title=info.title,
            description=info.description,
            instructions=self.upstream.instructions,
            **handlers,
        )
        server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self.on_initialized
        )
        server.notification_options = NotificationOptions(
            prompts_changed=bool(capabilities.prompts and capabilities.prompts.list_changed),
            resources_changed=bool(capabilities.resources and capabilities.resources.list_changed),
            tools_changed=bool(capabilities.tools and capabilities.tools.list_changed),
        )
        return server


@asynccontextmanager
async def open_proxy(
    upstream: Upstream, tool_gate: ToolGate, hints: PolicyHints | None
) -> AsyncIterator[Proxy]:
    """Start the upstream and give a ready `Proxy`; everything is stopped on exit."""
    holder: list[Proxy] = []

    async def relay(message: IncomingMessage) -> None:
        if holder:
            await holder[0].on_upstream_message(message)

    async with connect(upstream, message_handler=relay) as session:
        proxy = Proxy(session, tool_gate, Downstream(), hints)
        holder.append(proxy)
        yield proxy


async def serve_stdio(proxy: Proxy) -> None:
    from mcp.server.stdio import stdio_server

    server = proxy.build_server()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


class BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <token>` (compared in constant time).

    `keyturn mcp-proxy --listen` serves tools that run with keyturn approvals and upstream credentials the
    agent never holds: anyone who can reach the port could otherwise call them as the proxy's agent.
    """

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("the --listen token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            presented = dict(scope.get("headers") or ()).get(b"authorization", b"")
            if not hmac.compare_digest(presented, self._expected):
                body = json.dumps(
                    {"error": "unauthorized", "message": "send Authorization: Bearer <the proxy's token>"}
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="keyturn-mcp-proxy"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


async def serve_http(proxy: Proxy, host: str, port: int, *, token: str, path: str = "/mcp") -> None:
    import uvicorn

    server = proxy.build_server()
    app = BearerAuth(server.streamable_http_app(streamable_http_path=path, host=host), token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()
