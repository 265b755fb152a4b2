"""Helpers for the MCP gateway tests: a temporary git repository, the proxy as a real subprocess, polling.

The agent is the official `mcp` ClientSession; `keyturn mcp-proxy` runs as the console script, exactly as an
agent's `mcpServers` configuration would start it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp.client.session import ClientSession, MessageHandlerFnT
from mcp.client.stdio import StdioServerParameters, stdio_client

from support.live import LiveServer, keyturn_executable

AGENT = "agent:deploy-bot"


def git(repo: Path, *args: str) -> str:
    """Run git in a test repository (never in the project's own checkout)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    (path / "README.md").write_text("hello\n", encoding="utf-8")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial commit")
    return path


def git_upstream(repo: Path) -> list[str]:
    return [sys.executable, "-m", "mcp_server_git", "--repository", str(repo)]


def proxy_parameters(
    server_url: str, api_key: str, *options: str, upstream: list[str] | None = None
) -> StdioServerParameters:
    args = ["mcp-proxy", "--gate", server_url, "--progress-interval", "0.2", *options]
    if upstream is not None:
        args += ["--", *upstream]
    return StdioServerParameters(command=keyturn_executable(), args=args, env={"KEYTURN_API_KEY": api_key})


@asynccontextmanager
async def agent_session(
    parameters: StdioServerParameters, message_handler: MessageHandlerFnT | None = None
) -> AsyncIterator[ClientSession]:
    """The agent: an initialised official MCP client session with the proxy subprocess."""
    async with (
        stdio_client(parameters) as (read, write),
        ClientSession(read, write, message_handler=message_handler) as session,
    ):
        with anyio.fail_after(30):
            await session.initialize()
        yield session


@asynccontextmanager
async def held_session(parameters: StdioServerParameters) -> AsyncIterator[ClientSession]:
    """`agent_session` for a module-scoped fixture, whose setup and teardown run in different tasks.

    anyio cancel scopes must be left by the task that entered them, so one dedicated task owns the session
    from start to end and the fixture only hands it out.
    """
    ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def own() -> None:
        try:
            async with agent_session(parameters) as session:
                ready.set_result(session)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    owner = asyncio.get_running_loop().create_task(own())
    try:
        yield await ready
    finally:
        stop.set()
        await owner


def agent_requests(server: LiveServer) -> list[dict[str, Any]]:
    """Every request of the agent, newest first (what `keyturn list` shows it)."""
    with server.client(AGENT) as client:
        items: list[dict[str, Any]] = client.list(limit=200)["items"]
        return items


async def wait_for_request(
    server: LiveServer,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    status: str | None = "pending",
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the agent's requests until one matches (and has `status`)."""
    deadline = time.monotonic() + timeout
    while True:
        items = await anyio.to_thread.run_sync(agent_requests, server)
        for item in items:
            if predicate(item) and (status is None or item["status"] == status):
                return item
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching request within {timeout}s; the agent's requests: {items}")
        await anyio.sleep(0.1)


async def review(
    server: LiveServer, who: str, request_id: str, decision: str, comment: str = "", **params: Any
) -> Any:
    def call() -> Any:
        with server.client(who) as client:
            return client.review(request_id, decision, comment, params or None)

    return await anyio.to_thread.run_sync(call)


async def get_request(server: LiveServer, request_id: str) -> dict[str, Any]:
    def call() -> dict[str, Any]:
        with server.client(AGENT) as client:
            item: dict[str, Any] = client.get(request_id)
            return item

    return await anyio.to_thread.run_sync(call)


async def wait_status(
    server: LiveServer, request_id: str, status: str, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        item = await get_request(server, request_id)
        if item["status"] == status or time.monotonic() > deadline:
            assert item["status"] == status, item
            return item
        await anyio.sleep(0.1)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then released)."""
    from support.live import free_port

    return f"http://127.0.0.1:{free_port()}"


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")
