"""Claude Agent SDK + keyturn: the `can_use_tool` callback, called exactly as the SDK calls it.

Running a real Claude session needs the Claude Code CLI and an Anthropic key; this script plays the
session's permission prompts instead (a Read, then a Bash command), so you can watch keyturn decide and
approve from the CLI. With a real session the same callback goes in the options:

    options = ClaudeAgentOptions(can_use_tool=keyturn_can_use_tool(gate, actions={"Bash": "shell.exec"}))

    make serve                                   # terminal 1
    export KEYTURN_API_KEY=…                     # an agent key (see README.md here)
    .venv/bin/python examples/agents/claude_agent_sdk_demo.py
"""

from __future__ import annotations

import asyncio

from _demo import URL, api_key
from claude_agent_sdk import PermissionResultAllow, ToolPermissionContext

from keyturn.sdk import AsyncGate
from keyturn.sdk.adapters.claude import keyturn_can_use_tool


async def main() -> None:
    gate = AsyncGate(URL, api_key(), timeout=900)
    # Claude's Bash carries `command`, like the policy's shell.exec rules expect: map it onto them.
    can_use_tool = keyturn_can_use_tool(gate, actions={"Bash": "shell.exec"})
    prompts = [
        ("Read", {"file_path": "/work/repo/README.md"}),  # claude.read: "reads are free"
        ("Bash", {"command": "git clean -xdf build/", "description": "remove build outputs"}),  # shell.exec
    ]
    for number, (tool_name, tool_input) in enumerate(prompts, 1):
        if tool_name == "Bash":
            print("  ⏳ waiting for an SRE: keyturn list --reviewable, then keyturn approve ID")
        result = await can_use_tool(
            tool_name, tool_input, ToolPermissionContext(tool_use_id=f"toolu_{number}")
        )
        if isinstance(result, PermissionResultAllow):
            print(f"{tool_name}: allow, input {result.updated_input}")
        else:
            print(f"{tool_name}: deny — {result.message}")
    await gate.close()


if __name__ == "__main__":
    asyncio.run(main())
