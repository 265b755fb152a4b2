"""The connection to the upstream MCP server: a child process over stdio, or a streamable-HTTP endpoint.

The upstream's credentials belong to this side of the proxy: environment variables for the child process
(`--upstream-env`) and headers for an HTTP endpoint (`--upstream-header`). The child process gets only the
SDK's safe default environment plus what was configured for it, so neither the agent's environment nor the
proxy's own keyturn API key leaks to the upstream, and the agent never sees the upstream's secrets.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TextIO

import mcp.types as types
from mcp.client.session import ClientSession, MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

CLIENT_INFO = types.Implementation(name="keyturn-mcp-proxy", version="0.1.0")


class UpstreamError(Exception):
    """The upstream MCP server could not be started, reached or initialised."""


@dataclass(frozen=True)
class StdioUpstream:
    """An upstream MCP server run as a child process speaking MCP on its stdin/stdout."""

    command: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def describe(self) -> str:
        return " ".join((self.command, *self.args))


@dataclass(frozen=True)
class HttpUpstream:
    """An upstream MCP server reached over streamable HTTP."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return self.url  # never the headers: they hold the credentials


Upstream = StdioUpstream | HttpUpstream


def parse_header(raw: str) -> tuple[str, str]:
    """`'Authorization: Bearer x'` -> `("Authorization", "Bearer x")`; ValueError names what is wrong."""
    name, sep, value = raw.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--upstream-header expects 'Name: value', got {raw!r}")
    return name.strip(), value.strip()


def parse_env(raw: str) -> tuple[str, str]:
    """`'GITHUB_TOKEN=abc'` -> `("GITHUB_TOKEN", "abc")`; ValueError names what is wrong."""
    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise ValueError(f"--upstream-env expects NAME=value, got {raw!r}")
    return name, value


@asynccontextmanager
async def connect(
    upstream: Upstream,
    message_handler: MessageHandlerFnT | None = None,
    errlog: TextIO = sys.stderr,
) -> AsyncIterator[ClientSession]:
    """An initialised client session with the upstream, closed (and the child stopped) on exit."""
    async with AsyncExitStack() as stack:
        try:
            if isinstance(upstream, StdioUpstream):
                if shutil.which(upstream.command) is None:
                    raise UpstreamError(f"upstream command not found: {upstream.command!r}")
                parameters = StdioServerParameters(
                    command=upstream.command,
                    args=list(upstream.args),
                    env=dict(upstream.env),
                    cwd=upstream.cwd,
                )
                read, write = await stack.enter_async_context(stdio_client(parameters, errlog=errlog))
            else:
                http = await stack.enter_async_context(create_mcp_http_client(headers=dict(upstream.headers)))
                read, write = await stack.enter_async_context(
                    streamable_http_client(upstream.url, http_client=http)
                )
            session = await stack.enter_async_context(
                ClientSession(read, write, message_handler=message_handler, client_info=CLIENT_INFO)
            )
            await session.initialize()
        except UpstreamError:
            raise
        except Exception as exc:  # whatever the transport raises, the operator needs one clear line
            raise UpstreamError(
                f"cannot start the upstream MCP server {upstream.describe()}: {_explain(exc)}"
            ) from exc
        yield session


def _explain(exc: BaseException) -> str:
    # anyio wraps transport failures in exception groups; the innermost cause is the useful one
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
