"""`keyturn mcp-proxy` in front of the real `mcp-server-git`, with the official MCP client as the agent.

Everything is real: `keyturn serve` and the proxy run as subprocesses, the proxy starts `python -m
mcp_server_git` on a temporary repository, and reviewers act through the REST API. The repository itself is
the witness of whether a gated call ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest

from support.live import LiveServer, start_server
from support.mcp_harness import (
    AGENT,
    agent_requests,
    agent_session,
    closed_port_url,
    get_request,
    git,
    git_upstream,
    make_repo,
    proxy_parameters,
    review,
    wait_for_request,
    wait_status,
)

POLICY = """\
version: 1
defaults:
  decision: review
  approvers: [security]
  ttl: 1h
rules:
  - name: git reads are free
    match: {action: ["mcp.git.git_status", "mcp.git.git_log", "mcp.git.git_diff*", "mcp.git.git_show"]}
    decision: allow
  - name: staging is free
    match: {action: mcp.git.git_add}
    decision: allow
  - name: commits need an sre
    match: {action: mcp.git.git_commit}
    decision: review
    quorum: 1
    approvers: [sre]
    editable: [params.message]
  - name: branches need an sre
    match: {action: mcp.git.git_create_branch}
    decision: review
    quorum: 1
    approvers: [sre]
  - name: scratch branches must be decided quickly
    match: {action: mcp.git.git_create_branch}
    when: "params.branch_name.startsWith('tmp-')"
    decision: review
    ttl: 2s
  - name: resets are for humans
    match: {action: mcp.git.git_reset}
    decision: deny
    reason: resets are done by humans, not agents
  - name: no checkout of main
    match: {action: mcp.git.git_checkout}
    when: "params.branch_name == 'main'"
    decision: deny
    reason: stay off main
"""

pytestmark = pytest.mark.timeout(60)

SRE = "user:alice@example.com"
OTHER_SRE = "user:bob@example.com"


@pytest.fixture(scope="module")
def keyturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("keyturn"), policy=POLICY, settings={"timer_interval": 0.1})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def head_message(repo: Path) -> str:
    return git(repo, "log", "-1", "--format=%s").strip()


def stage(repo: Path, name: str = "change.txt") -> None:
    (repo / name).write_text("a change\n", encoding="utf-8")
    git(repo, "add", name)


def proxy(keyturn: LiveServer, repo: Path, *options: str) -> Any:
    return proxy_parameters(
        keyturn.url, keyturn.tokens[AGENT], "--name", "git", *options, upstream=git_upstream(repo)
    )


async def test_passthrough_and_allowed_call_with_annotations_in_context(keyturn: LiveServer, repo: Path) -> None:
    async with agent_session(proxy(keyturn, repo)) as agent:
        assert agent.server_info is not None and agent.server_info.name == "mcp-git"  # the upstream's identity
        tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
        assert {"git_status", "git_commit", "git_reset", "git_create_branch"} <= set(tools)
        assert tools["git_commit"].input_schema["required"] == ["repo_path", "message"]  # schemas untouched

        result = await agent.call_tool("git_status", {"repo_path": str(repo)})
        assert not result.is_error, text_of(result)
        assert "working tree clean" in text_of(result)

    item = await wait_for_request(keyturn, lambda r: r["action"] == "mcp.git.git_status", status="succeeded")
    assert item["resource"] == "mcp://git/git_status"
    assert item["params"] == {"repo_path": str(repo)}
    full = await get_request(keyturn, item["id"])
    hints = full["context"]["mcp"]
    assert hints["server"] == "git" and hints["tool"] == "git_status"
    assert hints["annotations"]["readOnlyHint"] is True  # information for policy, as the upstream declared it
    assert [e["type"] for e in full["history"]][-1] in ("succeeded", "request.succeeded", "result")


async def test_commit_waits_for_approval_and_uses_the_edited_message(keyturn: LiveServer, repo: Path) -> None:
    stage(repo)
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with agent_session(proxy(keyturn, repo)) as agent:
        outcome: dict[str, types.CallToolResult] = {}

        async def commit() -> None:
            outcome["result"] = await agent.call_tool(
                "git_commit", {"repo_path": str(repo), "message": "wip"}, progress_callback=on_progress
            )

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(commit)
            pending = await wait_for_request(
                keyturn, lambda r: r["action"] == "mcp.git.git_commit" and r["params"]["repo_path"] == str(repo)
            )
            assert pending["still_needed"], pending
            # Pending: nothing has been committed, and the client hears about the wait.
            with anyio.fail_after(10):
                while len(progress) < 2:
                    await anyio.sleep(0.05)
            assert head_message(repo) == "initial commit"
            assert "waiting for approval" in progress[0] and pending["id"] in progress[0]
            assert "sre" in progress[0]  # who is still needed
            await review(keyturn, SRE, pending["id"], "approve", "reword it", message="feat: add change.txt")

    result = outcome["result"]
    assert not result.is_error, text_of(result)
    assert head_message(repo) == "feat: add change.txt"  # the APPROVED message, not the agent's
    done = await wait_status(keyturn, pending["id"], "succeeded")
    assert done["params"]["message"] == "wip" and done["approved_params"]["message"] == "feat: add change.txt"


async def test_denied_commit_returns_the_reason_and_changes_nothing(keyturn: LiveServer, repo: Path) -> None:
    stage(repo)
    before = git(repo, "log", "--format=%H")
    async with agent_session(proxy(keyturn, repo)) as agent:
        outcome: dict[str, types.CallToolResult] = {}

        async def commit() -> None:
            outcome["result"] = await agent.call_tool("git_commit", {"repo_path": str(repo), "message": "yolo"})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(commit)
            pending = await wait_for_request(
                keyturn, lambda r: r["action"] == "mcp.git.git_commit" and r["params"]["message"] == "yolo"
            )
            await review(keyturn, OTHER_SRE, pending["id"], "deny", "squash your commits first")

    result = outcome["result"]
    assert result.is_error
    assert "squash your commits first" in text_of(result)
    assert git(repo, "log", "--format=%H") == before
    assert git(repo, "diff", "--cached", "--name-only").strip() == "change.txt"  # still staged, uncommitted
    assert (await get_request(keyturn, pending["id"]))["status"] == "denied"


async def test_policy_deny_is_immediate_and_never_reaches_the_upstream(keyturn: LiveServer, repo: Path) -> None:
    stage(repo)
    async with agent_session(proxy(keyturn, repo)) as agent:
        result = await agent.call_tool("git_reset", {"repo_path": str(repo)})
    assert result.is_error
    assert "resets are done by humans" in text_of(result)
    assert git(repo, "diff", "--cached", "--name-only").strip() == "change.txt"  # git_reset would unstage it


async def test_three_concurrent_calls_resolve_independently_and_expiry_fails_closed(
    keyturn: LiveServer, repo: Path
) -> None:
    async with agent_session(proxy(keyturn, repo)) as agent:
        results: dict[str, types.CallToolResult] = {}

        async def create(branch: str) -> None:
            results[branch] = await agent.call_tool(
                "git_create_branch", {"repo_path": str(repo), "branch_name": branch}
            )

        async with anyio.create_task_group() as tasks:
            for branch in ("feature-a", "feature-b", "tmp-c"):
                tasks.start_soon(create, branch)
            waiting = {}
            for branch in ("feature-a", "feature-b", "tmp-c"):
                waiting[branch] = await wait_for_request(
                    keyturn,
                    lambda r, b=branch: r["action"] == "mcp.git.git_create_branch"  # type: ignore[misc]
                    and r["params"]["branch_name"] == b
                    and r["params"]["repo_path"] == str(repo),
                )
            assert len({item["id"] for item in waiting.values()}) == 3
            await review(keyturn, OTHER_SRE, waiting["feature-b"]["id"], "deny", "no feature-b, please")
            await review(keyturn, SRE, waiting["feature-a"]["id"], "approve", "fine")
            # tmp-c is left alone: its 2 s ttl runs out and it must fail closed

    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert "feature-a" in branches
    assert "feature-b" not in branches and "tmp-c" not in branches
    assert not results["feature-a"].is_error, text_of(results["feature-a"])
    assert results["feature-b"].is_error and "no feature-b, please" in text_of(results["feature-b"])
    assert results["tmp-c"].is_error and "expired" in text_of(results["tmp-c"])
    assert (await get_request(keyturn, waiting["tmp-c"]["id"]))["status"] == "expired"
    assert (await get_request(keyturn, waiting["feature-a"]["id"]))["status"] == "succeeded"


async def test_unreachable_keyturn_fails_closed(keyturn: LiveServer, repo: Path) -> None:
    stage(repo)
    parameters = proxy_parameters(
        closed_port_url(), keyturn.tokens[AGENT], "--name", "git", upstream=git_upstream(repo)
    )
    async with agent_session(parameters) as agent:
        assert "git_commit" in {tool.name for tool in (await agent.list_tools()).tools}  # the proxy itself is up
        result = await agent.call_tool("git_commit", {"repo_path": str(repo), "message": "sneaky"})
    assert result.is_error
    assert "not run" in text_of(result) and "cannot reach keyturn" in text_of(result)
    assert head_message(repo) == "initial commit"


async def test_hide_denied_hides_only_unconditional_denies(keyturn: LiveServer, repo: Path) -> None:
    async with agent_session(proxy(keyturn, repo, "--hide-denied")) as agent:
        names = {tool.name for tool in (await agent.list_tools()).tools}
        assert "git_reset" not in names  # denied by a rule without `when`
        assert "git_checkout" in names  # denied only for main: a `when`, so it stays
        assert {"git_status", "git_commit"} <= names
        # Hiding is cosmetic: calling the hidden tool anyway is still refused by policy.
        result = await agent.call_tool("git_reset", {"repo_path": str(repo)})
        assert result.is_error and "resets are done by humans" in text_of(result)
        checkout = await agent.call_tool("git_checkout", {"repo_path": str(repo), "branch_name": "main"})
        assert checkout.is_error and "stay off main" in text_of(checkout)


async def test_the_ledger_shows_every_call(keyturn: LiveServer, repo: Path) -> None:
    async with agent_session(proxy(keyturn, repo)) as agent:
        await agent.call_tool("git_status", {"repo_path": str(repo)})
        await agent.call_tool("git_log", {"repo_path": str(repo)})
        await agent.call_tool("git_reset", {"repo_path": str(repo)})
    mine = [r for r in await anyio.to_thread.run_sync(agent_requests, keyturn) if r["params"].get("repo_path") == str(repo)]
    assert sorted((r["action"], r["status"]) for r in mine) == [
        ("mcp.git.git_log", "succeeded"),
        ("mcp.git.git_reset", "denied"),
        ("mcp.git.git_status", "succeeded"),
    ]
    for item in mine:
        history = (await get_request(keyturn, item["id"]))["history"]
        assert history, item  # every call has its events in the ledger


async def test_unknown_tool_is_a_protocol_error_without_a_request(keyturn: LiveServer, repo: Path) -> None:
    from mcp.shared.exceptions import MCPError

    async with agent_session(proxy(keyturn, repo)) as agent:
        with pytest.raises(MCPError, match="Unknown tool"):
            await agent.call_tool("git_push_force", {"repo_path": str(repo)})
    assert not [r for r in await anyio.to_thread.run_sync(agent_requests, keyturn) if "git_push_force" in r["action"]]
