"""LangChain 1.x / LangGraph adapter, driven by a real `create_agent` graph with a scripted chat model that
emits tool calls: a human reviews on the real server, the next model turn sees the result or the reason."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import BaseTool, ToolException, tool
from pydantic import Field
from test_adapters_common import AGENT, Reviewer, latest, module_server

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters import ActionSpec, AdapterError
from keyturn.sdk.adapters.langchain import KeyturnMiddleware, gated_tool


class ScriptedChatModel(GenericFakeChatModel):
    """langchain-core's fake chat model, plus `bind_tools` (create_agent needs it) and a record of what
    the model was shown on each turn."""

    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        self.seen.append(list(messages))
        return super()._generate(messages, *args, **kwargs)

    def tool_message(self, call_id: str) -> ToolMessage:
        """The tool message for `call_id` the model saw on its last turn."""
        found = [m for m in self.seen[-1] if isinstance(m, ToolMessage) and m.tool_call_id == call_id]
        assert found, f"the model never saw a tool message for {call_id}"
        return found[0]


__all__ = ["module_server"]  # the fixture, imported so pytest finds it here


def scripted(*calls: tuple[str, dict[str, Any], str]) -> ScriptedChatModel:
    first = AIMessage(
        content="", tool_calls=[{"name": n, "args": a, "id": i, "type": "tool_call"} for n, a, i in calls]
    )
    return ScriptedChatModel(messages=iter([first, AIMessage(content="done")]))


def make_export(ran: list[tuple[str, int]]) -> BaseTool:
    @tool
    def export_table(table: str, rows: int) -> str:
        """Export rows of a table."""
        ran.append((table, rows))
        return f"exported {rows} rows of {table}"

    return export_table


EXPORT = {"export_table": ActionSpec("db.export", resource=lambda p: f"postgres://prod/{p['table']}")}


def test_middleware_sync_approval_runs_the_tool_with_edited_args(module_server: Any) -> None:
    live_server = module_server
    gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[tuple[str, int]] = []
    model = scripted(("export_table", {"table": "customers", "rows": 5000}, "t1"))
    agent = create_agent(model, tools=[make_export(ran)], middleware=[KeyturnMiddleware(gate, EXPORT)])
    reviewer = Reviewer(
        live_server, "user:alice@example.com", "db.export", "approve", "narrowed", {"rows": 500}
    )
    reviewer.start()
    result = agent.invoke({"messages": [("user", "export customers")]})
    request_id = reviewer.join()

    assert ran == [("customers", 500)]
    assert model.tool_message("t1").content == "exported 500 rows of customers"
    assert result["messages"][-1].content == "done"
    record = latest(live_server, "db.export")
    assert record["id"] == request_id and record["status"] == "succeeded"
    assert record["approved_params"] == {"table": "customers", "rows": 500}
    assert record["resource"] == "postgres://prod/customers" and record["context"]["tool_call_id"] == "t1"
    gate.close()


async def test_middleware_async_denial_reaches_the_model_and_the_tool_never_runs(module_server: Any) -> None:
    live_server = module_server
    gate = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[tuple[str, int]] = []
    model = scripted(("export_table", {"table": "customers", "rows": 5000}, "t1"))
    agent = create_agent(model, tools=[make_export(ran)], middleware=[KeyturnMiddleware(gate, EXPORT)])
    reviewer = Reviewer(live_server, "user:bob@example.com", "db.export", "deny", "use the staging replica")
    reviewer.start()
    await agent.ainvoke({"messages": [("user", "export customers")]})
    reviewer.join()

    assert ran == []
    message = model.tool_message("t1")
    assert message.status == "error"
    assert "denied by user:bob@example.com" in str(message.content) and "staging replica" in str(
        message.content
    )
    assert latest(live_server, "db.export")["status"] == "denied"
    await gate.close()


def test_unlisted_tools_are_gated_under_the_prefix_unless_it_is_none(module_server: Any) -> None:
    live_server = module_server
    gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[str] = []

    @tool
    def read(key: str) -> str:
        """Read a key."""
        ran.append(key)
        return f"{key}=1"

    # `kv.read` matches the policy's `*.read` rule: allowed with no human, but recorded.
    model = scripted(("read", {"key": "a"}, "t1"))
    middleware = KeyturnMiddleware(gate, prefix="kv")
    create_agent(model, tools=[read], middleware=[middleware]).invoke({"messages": [("user", "go")]})
    assert ran == ["a"] and latest(live_server, "kv.read")["status"] == "succeeded"

    # prefix=None: unlisted tools pass through and nothing is submitted.
    model = scripted(("read", {"key": "b"}, "t2"))
    middleware = KeyturnMiddleware(gate, prefix=None)
    create_agent(model, tools=[read], middleware=[middleware]).invoke({"messages": [("user", "go")]})
    assert ran == ["a", "b"]
    with live_server.client(AGENT) as client:
        assert len([i for i in client.list()["items"] if i["action"] == "kv.read"]) == 1
    gate.close()


def test_a_tool_error_is_reported_failed_but_still_reaches_the_model(module_server: Any) -> None:
    live_server = module_server
    gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)

    @tool
    def get(key: str) -> str:
        """Fetch a key."""
        raise ToolException("backend timed out")

    get.handle_tool_error = True
    model = scripted(("get", {"key": "a"}, "t1"))
    create_agent(model, tools=[get], middleware=[KeyturnMiddleware(gate, prefix="kv")]).invoke(
        {"messages": [("user", "go")]}
    )
    message = model.tool_message("t1")
    assert message.status == "error" and "backend timed out" in str(message.content)
    assert latest(live_server, "kv.get")["status"] == "failed"
    gate.close()


async def test_gated_tool_without_middleware(module_server: Any) -> None:
    live_server = module_server
    sync_gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)
    async_gate = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[tuple[str, int]] = []
    export = gated_tool(async_gate, make_export(ran), action="db.export", sync_gate=sync_gate)
    assert export.name == "export_table" and set(export.args) == {"table", "rows"}

    model = scripted(("export_table", {"table": "orders", "rows": 10}, "t1"))
    reviewer = Reviewer(live_server, "user:alice@example.com", "db.export", "approve", "", {"rows": 3})
    reviewer.start()
    await create_agent(model, tools=[export]).ainvoke({"messages": [("user", "go")]})
    reviewer.join()
    assert ran == [("orders", 3)] and model.tool_message("t1").content == "exported 3 rows of orders"

    denied = gated_tool(sync_gate, make_export(ran), action="test.deny")
    model = scripted(("export_table", {"table": "orders", "rows": 10}, "t2"))
    create_agent(model, tools=[denied]).invoke({"messages": [("user", "go")]})
    assert ran == [("orders", 3)] and "never allowed" in str(model.tool_message("t2").content)

    # A sync call on an AsyncGate cannot wait: it says so instead of blocking the loop or running ungated.
    with pytest.raises(AdapterError, match="AsyncGate"):
        gated_tool(async_gate, make_export(ran), action="db.export").invoke({"table": "t", "rows": 1})
    assert ran == [("orders", 3)]
    sync_gate.close()
    await async_gate.close()
