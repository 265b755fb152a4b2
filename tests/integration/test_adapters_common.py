"""The adapters' shared helper, and `Reviewer`: a human approving or denying from another thread.

`Reviewer` is imported by the other adapter tests: while the agent waits inside the framework, a human
identity polls its review queue on the real server, then approves (optionally narrowing params) or denies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keyturn.sdk import Gate
from keyturn.sdk.adapters import ActionSpec, AdapterError, action_for_tool
from keyturn.sdk.adapters._common import jsonable_params, run_gated_sync
from support.live import DEFAULT_POLICY, LiveServer, start_server

AGENT = "agent:deploy-bot"


def shared_server(
    tmp_path_factory: pytest.TempPathFactory, policy: str = DEFAULT_POLICY
) -> Iterator[LiveServer]:
    """One real server for a whole test module: starting one costs seconds, and the tests of a module run
    one after the other, each waiting on its own action, so they cannot see each other's requests."""
    server = start_server(tmp_path_factory.mktemp("server"), policy=policy)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from shared_server(tmp_path_factory)


class Reviewer:
    """Reviews the next pending request for `action` as `who`, from a background thread."""

    def __init__(
        self,
        server: Any,
        who: str,
        action: str,
        decision: str = "approve",
        comment: str = "",
        params: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.server, self.who, self.action = server, who, action
        self.decision, self.comment, self.params, self.timeout = decision, comment, params, timeout
        self.request_id: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Reviewer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.server.client(self.who) as client:
                deadline = time.monotonic() + self.timeout
                while time.monotonic() < deadline:
                    items = client.list(reviewable=True)["items"]
                    match = next(
                        (i for i in items if i["action"] == self.action and i["status"] == "pending"), None
                    )
                    if match is not None:
                        self.request_id = match["id"]
                        client.review(match["id"], self.decision, self.comment, self.params)
                        return
                    time.sleep(0.05)
                raise AssertionError(f"no pending {self.action} request reached {self.who}'s queue")
        except BaseException as exc:
            self.error = exc

    def join(self) -> str:
        self._thread.join(self.timeout + 5)
        if self.error is not None:
            raise self.error
        assert self.request_id is not None
        return self.request_id


def latest(server: Any, action: str) -> dict[str, Any]:
    """The agent's newest request for `action` (status, params, approved params, history)."""
    with server.client(AGENT) as client:
        items = [i for i in client.list(limit=200)["items"] if i["action"] == action]
        assert items, f"no {action} request on the server"
        newest = max(items, key=lambda i: i["created_at"])
        return dict(client.get(newest["id"]))


def test_action_names_are_predictable() -> None:
    assert action_for_tool("claude", "Bash") == "claude.bash"
    assert action_for_tool("claude", "NotebookEdit") == "claude.notebookedit"
    assert action_for_tool("langchain", "export table!") == "langchain.export.table"
    # MCP tools keep the MCP gateway's action, whatever the prefix, so one rule covers both paths.
    assert action_for_tool("claude", "mcp__git__git_commit") == "mcp.git.git_commit"
    with pytest.raises(AdapterError, match="no usable characters"):
        action_for_tool("claude", "!!!")


def test_action_spec_computes_fields_from_params() -> None:
    spec = ActionSpec(
        "db.export",
        resource=lambda p: f"postgres://prod/{p['table']}",
        justification="nightly report",
        context=lambda p: {"rows_asked": p["rows"]},
    )
    fields = spec.request_fields({"table": "customers", "rows": 5}, {"framework": "x"})
    assert fields == {
        "resource": "postgres://prod/customers",
        "params": {"table": "customers", "rows": 5},
        "justification": "nightly report",
        "context": {"rows_asked": 5, "framework": "x"},
    }
    with pytest.raises(AdapterError, match="action"):
        ActionSpec("")


def test_unserialisable_arguments_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(AdapterError, match="object"):
        jsonable_params({"handle": object()})


def test_sync_body_never_runs_on_denial_and_reports_a_returned_failure(module_server: Any) -> None:
    live_server = module_server
    gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[dict[str, Any]] = []

    def body(params: dict[str, Any]) -> str:
        ran.append(params)
        return "error: disk full"

    denied = run_gated_sync(gate, ActionSpec("test.deny"), {"x": 1}, body)
    assert ran == []
    assert isinstance(denied, str) and "test.deny is never allowed" in denied

    # A tool that *returns* an error is reported failed, and its own answer still reaches the caller.
    result = run_gated_sync(
        gate, ActionSpec("test.allow"), {"x": 2}, body, failed=lambda r: r.startswith("error")
    )
    assert result == "error: disk full" and ran == [{"x": 2}]
    assert latest(live_server, "test.allow")["status"] == "failed"
    gate.close()
