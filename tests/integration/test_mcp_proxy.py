"""`keyturn mcp-proxy` in front of the real `mcp-server-git`, with the official MCP client as the agent.

Everything is real: `keyturn serve` and the proxy run as subprocesses, the proxy starts `python -m
mcp_server_git` on a temporary repository, and reviewers act through the REST API. The repository itself is
the witness of whether a gated call ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
import pytest_asyncio
from mcp.client.session import ClientSession

from keyturn.client import ApiError
from support.live import LiveServer, start_server
from support.mcp_harness import (
    AGENT,
    agent_requests,
    agent_session,
    closed_port_url,
    get_request,
    git,
    git_upstream,
    held_session,
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

# One keyturn server, one repository and one proxy session serve the tests of this module (starting the
# proxy and its upstream costs seconds); each test uses its own file names, branches and messages.
pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]

SRE = "user:alice@example.com"
OTHER_SRE = "user:bob@example.com"


@pytest.fixture(scope="module")
def keyturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("keyturn"), policy=POLICY, settings={"timer_interval": 0.1})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("git") / "repo")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(keyturn: LiveServer, repo: Path) -> AsyncIterator[ClientSession]:
    """The agent's session with `keyturn mcp-proxy --name git --hide-denied -- python -m mcp_server_git …`."""
    async with held_session(proxy(keyturn, repo, "--hide-denied")) as session:
        yield session


def text_of(result: types.CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, types.TextContent))


def log_messages(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%s").splitlines()


def staged(repo: Path) -> list[str]:
    return git(repo, "diff", "--cached", "--name-only").split()


def stage(repo: Path, name: str) -> None:
    (repo / name).write_text(f"{name}\n", encoding="utf-8")
    git(repo, "add", name)


def unstage(repo: Path, name: str) -> None:
    git(repo, "rm", "-q", "--cached", name)


def proxy(keyturn: LiveServer, repo: Path, *options: str, gate: str | None = None) -> Any:
    return proxy_parameters(
        gate or keyturn.url, keyturn.tokens[AGENT], "--name", "git", *options, upstream=git_upstream(repo)
    )


def for_repo(repo: Path, action: str, **params: Any) -> Any:
    def match(item: dict[str, Any]) -> bool:
        mine = item["params"].get("repo_path") == str(repo)
        return (
            mine and item["action"] == action and all(item["params"].get(k) == v for k, v in params.items())
        )

    return match


async def test_passthrough_and_allowed_call_with_annotations_in_context(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    assert agent.server_info is not None and agent.server_info.name == "mcp-git"  # the upstream's identity
    tools = {tool.name: tool for tool in (await agent.list_tools()).tools}
    assert {"git_status", "git_commit", "git_create_branch", "git_log"} <= set(tools)
    assert tools["git_commit"].input_schema["required"] == ["repo_path", "message"]  # schemas untouched
    assert tools["git_status"].annotations is not None and tools["git_status"].annotations.read_only_hint

    result = await agent.call_tool("git_status", {"repo_path": str(repo)})
    assert not result.is_error, text_of(result)
    assert "Repository status" in text_of(result)

    item = await wait_for_request(keyturn, for_repo(repo, "mcp.git.git_status"), status="succeeded")
    assert item["resource"] == "mcp://git/git_status"
    full = await get_request(keyturn, item["id"])
    hints = full["context"]["mcp"]
    assert hints["server"] == "git" and hints["tool"] == "git_status"
    assert hints["annotations"]["readOnlyHint"] is True  # information for policy, as the upstream declared it
    assert hints["client"]["name"]  # the agent application, as it introduced itself


async def test_commit_waits_for_approval_and_uses_the_edited_message(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    stage(repo, "edited.txt")
    heard: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    outcome: dict[str, types.CallToolResult] = {}

    async def commit() -> None:
        outcome["result"] = await agent.call_tool(
            "git_commit", {"repo_path": str(repo), "message": "wip"}, progress_callback=on_progress
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(commit)
        pending = await wait_for_request(keyturn, for_repo(repo, "mcp.git.git_commit", message="wip"))
        assert pending["still_needed"], pending
        # Pending: nothing is committed yet, and the client hears about the wait (heartbeat every 0.2 s).
        with anyio.fail_after(10):
            while len(heard) < 3:
                await anyio.sleep(0.05)
        assert "edited.txt" in staged(repo)
        assert "wip" not in log_messages(repo)
        assert pending["id"] in heard[0] and "waiting for approval" in heard[0]
        assert "sre" in heard[-1]  # who is still needed
        await review(keyturn, SRE, pending["id"], "approve", "reword it", message="feat: add edited.txt")

    result = outcome["result"]
    assert not result.is_error, text_of(result)
    assert log_messages(repo)[0] == "feat: add edited.txt"  # the APPROVED message, not the agent's
    assert "wip" not in log_messages(repo)
    done = await wait_status(keyturn, pending["id"], "succeeded")
    assert done["params"]["message"] == "wip"
    assert done["approved_params"]["message"] == "feat: add edited.txt"


async def test_denied_commit_returns_the_reason_and_changes_nothing(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    stage(repo, "denied.txt")
    before = git(repo, "log", "--format=%H")
    outcome: dict[str, types.CallToolResult] = {}

    async def commit() -> None:
        outcome["result"] = await agent.call_tool("git_commit", {"repo_path": str(repo), "message": "yolo"})

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(commit)
        pending = await wait_for_request(keyturn, for_repo(repo, "mcp.git.git_commit", message="yolo"))
        await review(keyturn, OTHER_SRE, pending["id"], "deny", "squash your commits first")

    result = outcome["result"]
    assert result.is_error
    assert "squash your commits first" in text_of(result)
    assert git(repo, "log", "--format=%H") == before  # git log: unchanged
    assert "denied.txt" in staged(repo)
    assert (await get_request(keyturn, pending["id"]))["status"] == "denied"
    unstage(repo, "denied.txt")


async def test_policy_deny_is_immediate_and_never_reaches_the_upstream(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    stage(repo, "reset.txt")
    names = {tool.name for tool in (await agent.list_tools()).tools}
    assert "git_reset" not in names  # --hide-denied: denied by a rule without `when`
    assert "git_checkout" in names  # denied only for main (a `when`), so it stays listed
    # Hiding is cosmetic: calling the hidden tool anyway is still refused by policy, with the reason.
    result = await agent.call_tool("git_reset", {"repo_path": str(repo)})
    assert result.is_error and "resets are done by humans" in text_of(result)
    assert "reset.txt" in staged(repo)  # a real git_reset would have unstaged it
    checkout = await agent.call_tool("git_checkout", {"repo_path": str(repo), "branch_name": "main"})
    assert checkout.is_error and "stay off main" in text_of(checkout)
    unstage(repo, "reset.txt")


async def test_three_concurrent_calls_resolve_independently_and_expiry_fails_closed(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    results: dict[str, types.CallToolResult] = {}
    branches = ("feature-a", "feature-b", "tmp-c")

    async def create(branch: str) -> None:
        results[branch] = await agent.call_tool(
            "git_create_branch", {"repo_path": str(repo), "branch_name": branch}
        )

    async with anyio.create_task_group() as tasks:
        for branch in branches:
            tasks.start_soon(create, branch)
        waiting = {
            branch: await wait_for_request(
                keyturn, for_repo(repo, "mcp.git.git_create_branch", branch_name=branch)
            )
            for branch in branches
        }
        assert len({item["id"] for item in waiting.values()}) == 3
        await review(keyturn, OTHER_SRE, waiting["feature-b"]["id"], "deny", "no feature-b, please")
        await review(keyturn, SRE, waiting["feature-a"]["id"], "approve", "fine")
        # tmp-c is left alone: its 2 s ttl runs out and it must fail closed

    existing = git(repo, "branch", "--format=%(refname:short)").split()
    assert "feature-a" in existing
    assert "feature-b" not in existing and "tmp-c" not in existing
    assert not results["feature-a"].is_error, text_of(results["feature-a"])
    assert results["feature-b"].is_error and "no feature-b, please" in text_of(results["feature-b"])
    assert results["tmp-c"].is_error and "expired" in text_of(results["tmp-c"])
    assert (await get_request(keyturn, waiting["tmp-c"]["id"]))["status"] == "expired"
    assert (await get_request(keyturn, waiting["feature-a"]["id"]))["status"] == "succeeded"


async def test_the_ledger_shows_every_call(keyturn: LiveServer, repo: Path, agent: ClientSession) -> None:
    before = {item["id"] for item in await anyio.to_thread.run_sync(agent_requests, keyturn)}
    await agent.call_tool("git_log", {"repo_path": str(repo), "max_count": 1})
    await agent.call_tool("git_show", {"repo_path": str(repo), "revision": "HEAD"})
    await agent.call_tool("git_reset", {"repo_path": str(repo)})
    new = [
        item for item in await anyio.to_thread.run_sync(agent_requests, keyturn) if item["id"] not in before
    ]
    assert sorted((item["action"], item["status"]) for item in new) == [
        ("mcp.git.git_log", "succeeded"),
        ("mcp.git.git_reset", "denied"),
        ("mcp.git.git_show", "succeeded"),
    ]
    for item in new:
        events = [event["type"] for event in (await get_request(keyturn, item["id"]))["history"]]
        assert events[0] == "request.submitted" and events[-1] == f"request.{item['status']}", events
        if item["status"] == "succeeded":  # the grant was consumed before the upstream ran
            assert "grant.consumed" in events


async def test_unknown_tool_is_a_protocol_error_without_a_request(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError, match="Unknown tool"):
        await agent.call_tool("git_push_force", {"repo_path": str(repo)})
    requests = await anyio.to_thread.run_sync(agent_requests, keyturn)
    assert not [item for item in requests if "git_push_force" in item["action"]]


async def test_unreachable_keyturn_fails_closed(keyturn: LiveServer, repo: Path) -> None:
    stage(repo, "unreachable.txt")
    async with agent_session(proxy(keyturn, repo, gate=closed_port_url())) as other:
        names = {tool.name for tool in (await other.list_tools()).tools}
        assert "git_reset" in names  # without --hide-denied the upstream's list is passed through whole
        result = await other.call_tool("git_commit", {"repo_path": str(repo), "message": "sneaky"})
    assert result.is_error
    assert "not run" in text_of(result) and "cannot reach keyturn" in text_of(result)
    assert "sneaky" not in log_messages(repo)
    assert "unreachable.txt" in staged(repo)
    unstage(repo, "unreachable.txt")


async def test_a_call_the_agent_abandons_is_cancelled_and_never_runs(
    keyturn: LiveServer, repo: Path, agent: ClientSession
) -> None:
    stage(repo, "abandoned.txt")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(agent.call_tool, "git_commit", {"repo_path": str(repo), "message": "abandoned"})
            pending = await wait_for_request(
                keyturn, for_repo(repo, "mcp.git.git_commit", message="abandoned")
            )
            scope.cancel()  # the client gives up: the SDK sends notifications/cancelled to the proxy
    assert scope.cancelled_caught
    done = await wait_status(keyturn, pending["id"], "cancelled")
    assert done["status"] == "cancelled"
    # nobody can approve it any more, so it can never run later
    with pytest.raises(ApiError):
        await review(keyturn, SRE, pending["id"], "approve", "too late")
    assert "abandoned" not in log_messages(repo)
    unstage(repo, "abandoned.txt")
