"""OpenAI Agents SDK adapter, driven by the SDK's own `Runner` and its scripted `Model` (no network but
keyturn's): the model calls a gated tool, a human reviews on the real server, the next model turn sees
the tool's output or the reviewer's reason."""

from __future__ import annotations

from typing import Any

from agents import Agent, FunctionTool, Runner, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from test_adapters_common import AGENT, Reviewer, latest, module_server

from keyturn.sdk import AsyncGate, Gate
from keyturn.sdk.adapters.openai_agents import guard_function_tool, keyturn_tool

__all__ = ["module_server"]  # the fixture, imported so pytest finds it here


def tool_output(model: ScriptedModel, call_id: str) -> str:
    """What the model received, on its last turn, as the output of tool call `call_id`."""
    last = model.last_call
    assert last is not None and isinstance(last.input, list)
    outputs = [
        item for item in last.input if isinstance(item, dict) and item.get("type") == "function_call_output"
    ]
    match = [item for item in outputs if item.get("call_id") == call_id]
    assert match, f"no output for {call_id} in the model's input: {outputs}"
    return str(match[0]["output"])


def script(call: dict[str, Any], name: str = "export_table") -> ScriptedModel:
    return ScriptedModel([[function_call(name, call, call_id="call-1")], [assistant_message("done")]])


def export_tool(gate: AsyncGate | Gate, ran: list[tuple[str, int]]) -> FunctionTool:
    @keyturn_tool(gate, action="db.export", resource=lambda p: f"postgres://prod/{p['table']}")
    async def export_table(table: str, rows: int) -> str:
        """Export rows of a table."""
        ran.append((table, rows))
        return f"exported {rows} rows of {table}"

    return export_table


async def test_approved_call_runs_once_with_the_edited_params(module_server: Any) -> None:
    live_server = module_server
    gate = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[tuple[str, int]] = []
    model = script({"table": "customers", "rows": 5000})
    reviewer = Reviewer(
        live_server, "user:alice@example.com", "db.export", "approve", "500 is plenty", {"rows": 500}
    )
    reviewer.start()
    result = await Runner.run(
        Agent(name="ops", model=model, tools=[export_tool(gate, ran)]), "export customers"
    )
    request_id = reviewer.join()

    assert ran == [("customers", 500)]  # the body ran once, with the narrowed value, after approval
    assert tool_output(model, "call-1") == "exported 500 rows of customers"
    assert result.final_output == "done"
    record = latest(live_server, "db.export")
    assert record["id"] == request_id and record["status"] == "succeeded"
    assert record["params"]["rows"] == 5000 and record["approved_params"]["rows"] == 500
    assert record["resource"] == "postgres://prod/customers"
    assert record["context"]["framework"] == "openai-agents" and record["context"]["tool_call_id"] == "call-1"
    await gate.close()


async def test_denial_reaches_the_model_and_the_body_never_runs(module_server: Any) -> None:
    live_server = module_server
    gate = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)
    ran: list[tuple[str, int]] = []
    model = script({"table": "customers", "rows": 5000})
    reviewer = Reviewer(live_server, "user:bob@example.com", "db.export", "deny", "use the staging replica")
    reviewer.start()
    await Runner.run(Agent(name="ops", model=model, tools=[export_tool(gate, ran)]), "export customers")
    reviewer.join()

    assert ran == []
    text = tool_output(model, "call-1")
    assert "denied by user:bob@example.com" in text and "use the staging replica" in text
    assert latest(live_server, "db.export")["status"] == "denied"
    await gate.close()


async def test_policy_allow_and_policy_deny_need_no_human(module_server: Any) -> None:
    live_server = module_server
    gate = Gate(live_server.url, live_server.tokens[AGENT], timeout=30)  # a sync Gate works too
    calls: list[str] = []

    @keyturn_tool(gate, action="customers.read")
    def read_customer(customer_id: str) -> str:
        calls.append(customer_id)
        return f"customer {customer_id}: ok"

    @keyturn_tool(gate, action="test.deny")
    def drop_everything(confirm: bool) -> str:
        calls.append("drop")
        return "dropped"

    model = ScriptedModel(
        [
            [
                function_call("read_customer", {"customer_id": "c-42"}, call_id="r1"),
                function_call("drop_everything", {"confirm": True}, call_id="d1"),
            ],
            [assistant_message("done")],
        ]
    )
    await Runner.run(Agent(name="ops", model=model, tools=[read_customer, drop_everything]), "go")
    assert calls == ["c-42"]
    assert tool_output(model, "r1") == "customer c-42: ok"
    assert "denied by policy" in tool_output(model, "d1") and "never allowed" in tool_output(model, "d1")
    assert latest(live_server, "customers.read")["status"] == "succeeded"
    gate.close()


async def test_a_failing_body_is_reported_failed_and_the_model_gets_an_error(module_server: Any) -> None:
    live_server = module_server
    gate = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)

    @keyturn_tool(gate, action="customers.read")
    async def flaky(customer_id: str) -> str:
        raise RuntimeError("connection reset")

    model = script({"customer_id": "c-1"}, name="flaky")
    await Runner.run(Agent(name="ops", model=model, tools=[flaky]), "go")
    assert "error occurred" in tool_output(model, "call-1")
    record = latest(live_server, "customers.read")
    assert record["status"] == "failed"
    await gate.close()


async def test_guarding_an_existing_function_tool_and_failing_closed_when_unreachable(
    live_server: Any,
) -> None:
    ran: list[str] = []

    @function_tool
    def deploy(service: str) -> str:
        """Deploy a service."""
        ran.append(service)
        return f"deployed {service}"

    # An existing FunctionTool keeps its name and schema; the original stays ungated.
    live = AsyncGate(live_server.url, live_server.tokens[AGENT], timeout=30)
    gated = guard_function_tool(live, deploy, action="customers.read")
    assert gated.name == "deploy" and gated.params_json_schema == deploy.params_json_schema
    assert gated.on_invoke_tool is not deploy.on_invoke_tool
    model = script({"service": "api"}, name="deploy")
    await Runner.run(Agent(name="ops", model=model, tools=[gated]), "go")
    assert ran == ["api"] and tool_output(model, "call-1") == "deployed api"

    # Nothing listens on port 9: the tool must not run, and the run must not crash either.
    dead = AsyncGate("http://127.0.0.1:9", "kt_whatever", timeout=5)
    model = script({"service": "api"}, name="deploy")
    await Runner.run(
        Agent(name="ops", model=model, tools=[guard_function_tool(dead, deploy, action="k8s.apply")]), "go"
    )
    assert ran == ["api"]
    assert "error occurred" in tool_output(model, "call-1")
    await live.close()
    await dead.close()
