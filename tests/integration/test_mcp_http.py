"""The proxy over streamable HTTP: an HTTP upstream whose token only the proxy holds, and `--listen`.

The HTTP upstream is a real MCP server (tests/support/mcp_http_upstream.py, the SDK's `MCPServer`) in its own
process; the agent is the official ClientSession, talking to `keyturn mcp-proxy` over stdio in the first
test and over streamable HTTP (`--listen`) in the second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from support.live import LiveServer, free_port, start_server
from support.mcp_harness import (
    AGENT,
    agent_requests,
    agent_session,
    git,
    git_upstream,
    make_repo,
    proxy_parameters,
    review,
    wait_for_request,
    wait_http,
)

POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
rules:
  - name: toggles are free
    match: {action: mcp.notes.enable_extra}
    decision: allow
  - name: messages need an sre
    match: {action: mcp.notes.send_message}
    decision: review
    quorum: 1
    approvers: [sre]
  - name: local git is free
    match: {action: ["mcp.local.git_status", "mcp.local.git_commit"]}
    decision: allow
"""

UPSTREAM_TOKEN = "upstream-secret-4f9a"
LISTEN_TOKEN = "listen-token-0123456789abcdef"
SUPPORT = Path(__file__).parents[1] / "support"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def keyturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("keyturn"), policy=POLICY, settings={"timer_interval": 0.1})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def notes_upstream(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The FastMCP-style upstream on a free port; yields (its /mcp URL, its journal of sent messages)."""
    port = free_port()
    journal = tmp_path / "sent.jsonl"
    script = SUPPORT / "mcp_http_upstream.py"
    args = [
        sys.executable,
        str(script),
        "--port",
        str(port),
        "--token",
        UPSTREAM_TOKEN,
        "--journal",
        str(journal),
    ]
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/mcp")
        yield f"http://127.0.0.1:{port}/mcp", journal
    finally:
        process.terminate()
        process.wait(timeout=10)


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def test_http_upstream_passthrough_and_gated_calls(
    keyturn: LiveServer, notes_upstream: tuple[str, Path]
) -> None:
    url, journal = notes_upstream
    # Without the token the upstream refuses: only the proxy, which holds it, gets in.
    assert httpx.post(url, json={}).status_code == 401

    notifications: list[Any] = []

    async def on_message(message: Any) -> None:
        notifications.append(message)

    parameters = proxy_parameters(
        keyturn.url,
        keyturn.tokens[AGENT],
        "--name",
        "notes",
        "--upstream-url",
        url,
        "--upstream-header",
        f"X-Upstream-Token: {UPSTREAM_TOKEN}",
    )
    async with agent_session(parameters, message_handler=on_message) as agent:
        assert agent.server_info is not None and agent.server_info.name == "notes-upstream"
        assert agent.instructions == "A test server with notes and messages."
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
        assert set(tools) == {"add", "send_message", "enable_extra"}
        assert tools["add"].annotations is not None and tools["add"].annotations.read_only_hint is True

        # resources and prompts pass through
        resources = await agent.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["notes://today"]
        content = (await agent.read_resource("notes://today")).contents[0]
        assert isinstance(content, types.TextResourceContents) and content.text == "water the plants"
        assert [p.name for p in (await agent.list_prompts()).prompts] == ["greet"]
        prompt = await agent.get_prompt("greet", {"name": "Ada"})
        message = prompt.messages[0].content
        assert isinstance(message, types.TextContent) and "Ada" in message.text

        # A tool that calls itself read-only is still gated: hints inform policy, they never allow by
        # themselves. No rule allows mcp.notes.add, so it waits for the default approvers (security).
        outcome: dict[str, types.CallToolResult] = {}

        async def call(name: str, arguments: dict[str, Any]) -> None:
            outcome[name] = await agent.call_tool(name, arguments)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, "add", {"a": 2, "b": 3})
            tasks.start_soon(call, "send_message", {"to": "ops", "body": "deploy done"})
            add = await wait_for_request(keyturn, lambda r: r["action"] == "mcp.notes.add")
            assert add["context"]["mcp"]["annotations"]["readOnlyHint"] is True
            send = await wait_for_request(keyturn, lambda r: r["action"] == "mcp.notes.send_message")
            assert not journal.exists()  # pending: the message has not been sent
            await review(keyturn, "user:carol@example.com", add["id"], "approve", "harmless")
            await review(keyturn, "user:alice@example.com", send["id"], "approve", "ok")

        assert text_of(outcome["add"]) == "5"
        assert not outcome["send_message"].is_error, text_of(outcome["send_message"])
        assert [json.loads(line) for line in journal.read_text().splitlines()] == [
            {"to": "ops", "body": "deploy done"}
        ]

        # The upstream's tools/list_changed reaches the agent through the proxy.
        enabled = await agent.call_tool("enable_extra", {})
        assert not enabled.is_error, text_of(enabled)
        with anyio.fail_after(10):
            while not any(isinstance(n, types.ToolListChangedNotification) for n in notifications):
                await anyio.sleep(0.05)
        assert "extra" in {tool.name for tool in (await agent.list_tools()).tools}

    # The upstream credential never reached keyturn (nor, through it, a reviewer or the ledger).
    requests = await anyio.to_thread.run_sync(agent_requests, keyturn)
    assert {r["action"] for r in requests} >= {
        "mcp.notes.add",
        "mcp.notes.send_message",
        "mcp.notes.enable_extra",
    }
    assert UPSTREAM_TOKEN not in json.dumps(requests)


@pytest.mark.timeout(150)
async def test_listen_serves_streamable_http_with_upstream_env(keyturn: LiveServer, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "new.txt").write_text("new\n", encoding="utf-8")
    git(repo, "add", "new.txt")
    port = free_port()
    parameters = proxy_parameters(
        keyturn.url,
        keyturn.tokens[AGENT],
        "--name",
        "local",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream-env",
        "GIT_AUTHOR_NAME=Proxy Bot",
        upstream=git_upstream(repo),
    )
    env = {**os.environ, **(parameters.env or {}), "KEYTURN_MCP_PROXY_TOKEN": LISTEN_TOKEN}
    process = subprocess.Popen([parameters.command, *parameters.args], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/mcp", timeout=60)  # slow to start on a loaded machine
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {LISTEN_TOKEN}"}) as http,
            streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as agent,
        ):
            await agent.initialize()
            assert "git_commit" in {tool.name for tool in (await agent.list_tools()).tools}
            status = await agent.call_tool("git_status", {"repo_path": str(repo)})
            assert "new.txt" in text_of(status)
            commit = await agent.call_tool("git_commit", {"repo_path": str(repo), "message": "add new.txt"})
            assert not commit.is_error, text_of(commit)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    # --upstream-env reached the upstream process (GitPython takes the author from the environment).
    assert git(repo, "log", "-1", "--format=%an|%s").strip() == "Proxy Bot|add new.txt"


@pytest.mark.timeout(150)
async def test_listen_requires_the_bearer_token(keyturn: LiveServer, tmp_path: Path) -> None:
    """`--listen` has authentication of its own (issue #13 §4): without the token, or with another, the
    official client cannot even initialise; with no token configured the proxy makes one and says it once."""
    repo = make_repo(tmp_path / "repo")
    port = free_port()
    parameters = proxy_parameters(
        keyturn.url,
        keyturn.tokens[AGENT],
        "--name",
        "local",
        "--listen",
        f"127.0.0.1:{port}",
        upstream=git_upstream(repo),
    )
    env = {
        k: v for k, v in {**os.environ, **(parameters.env or {})}.items() if k != "KEYTURN_MCP_PROXY_TOKEN"
    }
    stderr = tmp_path / "proxy.err"
    with stderr.open("wb") as sink:
        process = subprocess.Popen([parameters.command, *parameters.args], env=env, stderr=sink)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        wait_http(url, timeout=60)
        printed = stderr.read_text()
        generated = printed.split("Authorization: Bearer ", 1)[1].split()[0]
        assert len(generated) >= 32
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        accept = {"Accept": "application/json, text/event-stream"}
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": generated}):
            refused = httpx.post(url, json=initialize, headers={**accept, **headers}, timeout=10)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        for token in ("nope", "wrong-token-0123456789"):
            with pytest.raises(ExceptionGroup) as refused_by_client:  # the client got 401 and gave up
                async with (
                    create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
                    streamable_http_client(url, http_client=http) as (read, write),
                    ClientSession(read, write) as agent,
                ):
                    with anyio.fail_after(10):
                        await agent.initialize()
            assert refused_by_client.group_contains(MCPError, match="error response")
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {generated}"}) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as agent,
        ):
            await agent.initialize()
            assert "git_status" in {tool.name for tool in (await agent.list_tools()).tools}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
