"""OpenAI Agents SDK + keyturn, with a scripted model (no OpenAI key needed).

The "model" asks for a customer record (a read: policy allows it at once) and then a 500-row export of
the staging customers table (policy: a data owner must approve). Approve or deny from another terminal
with the command this script prints; rows is editable, e.g. `keyturn approve ID --set rows=100`.

    make serve                                   # terminal 1
    export KEYTURN_API_KEY=…                     # an agent key (see README.md here)
    .venv/bin/python examples/agents/openai_agents_demo.py
"""

from __future__ import annotations

import asyncio

from _demo import URL, api_key, show_waiting
from agents import Agent, Runner
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call

from keyturn.sdk import AsyncGate
from keyturn.sdk.adapters.openai_agents import keyturn_tool


async def main() -> None:
    gate = AsyncGate(URL, api_key(), timeout=900)

    @keyturn_tool(gate, action="customers.get", resource=lambda p: f"crm://customers/{p['customer_id']}")
    async def get_customer(customer_id: str) -> str:
        """Look a customer up."""
        return f"customer {customer_id}: ACME Corp, tier gold"

    @keyturn_tool(
        gate,
        action="db.export",
        resource=lambda p: f"postgres://staging/{p['table']}",
        justification="quarterly churn analysis",
        on_update=show_waiting,
    )
    async def export_table(table: str, rows: int) -> str:
        """Export rows of a table to the analytics bucket."""
        return f"exported {rows} rows of {table} to s3://analytics/{table}.parquet"

    model = ScriptedModel(
        [
            [function_call("get_customer", {"customer_id": "c-42"}, call_id="call-1")],
            [function_call("export_table", {"table": "customers", "rows": 500}, call_id="call-2")],
            [assistant_message("All done.")],
        ]
    )
    agent = Agent(
        name="analyst",
        instructions="Help with customer analytics.",
        model=model,
        tools=[get_customer, export_table],
    )
    result = await Runner.run(agent, "Look up c-42, then export the customers table.")
    for item in result.new_items:
        if isinstance(item, ToolCallOutputItem):
            print(f"tool output seen by the model: {item.output}")
    print(f"final answer: {result.final_output}")
    await gate.close()


if __name__ == "__main__":
    asyncio.run(main())
