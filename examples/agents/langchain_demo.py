"""LangChain 1.x (create_agent / LangGraph) + keyturn middleware, with a scripted chat model (no API key).

The "model" lists pods (k8s.list: allowed by policy) and then runs a shell command (shell.exec: one SRE
must approve, and may narrow the command: `keyturn approve ID --set command="make test"`). A denial's
reason comes back to the model as the tool message.

    make serve                                   # terminal 1
    export KEYTURN_API_KEY=…                     # an agent key (see README.md here)
    .venv/bin/python examples/agents/langchain_demo.py
"""

from __future__ import annotations

import subprocess
from typing import Any

from _demo import URL, api_key, show_waiting
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from keyturn.sdk import Gate
from keyturn.sdk.adapters import ActionSpec
from keyturn.sdk.adapters.langchain import KeyturnMiddleware


class ScriptedModel(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:  # create_agent binds the tools
        return self


@tool
def list_pods(namespace: str) -> str:
    """List the pods of a namespace."""
    return f"{namespace}: api-7d9f (Running), worker-5c2a (Running)"


@tool
def run_shell(command: str) -> str:
    """Run a shell command in the repository."""
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    return f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[:500]}"


def main() -> None:
    gate = Gate(URL, api_key(), timeout=900)
    middleware = KeyturnMiddleware(
        gate,
        {
            "list_pods": ActionSpec("k8s.list", resource=lambda p: f"k8s://staging/{p['namespace']}"),
            "run_shell": ActionSpec("shell.exec", resource="repo://keyturn", on_update=show_waiting),
        },
    )
    calls = [
        AIMessage(
            content="", tool_calls=[{"name": "list_pods", "args": {"namespace": "payments"}, "id": "t1"}]
        ),
        AIMessage(
            content="",
            tool_calls=[{"name": "run_shell", "args": {"command": "echo cleaning && ls"}, "id": "t2"}],
        ),
        AIMessage(content="All done."),
    ]
    agent = create_agent(
        ScriptedModel(messages=iter(calls)), tools=[list_pods, run_shell], middleware=[middleware]
    )
    result = agent.invoke({"messages": [("user", "Check the payments pods, then clean the workspace.")]})
    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            print(f"tool message seen by the model ({message.status}): {message.content}")
    print(f"final answer: {result['messages'][-1].content}")
    gate.close()


if __name__ == "__main__":
    main()
