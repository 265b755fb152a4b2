"""Thin adapters of keyturn's `Gate` for agent frameworks. Import the one you use; each needs its framework:

- `keyturn.sdk.adapters.openai_agents`: `keyturn_tool`, `guard_function_tool` (OpenAI Agents SDK);
- `keyturn.sdk.adapters.langchain`: `KeyturnMiddleware`, `gated_tool` (LangChain 1.x / LangGraph);
- `keyturn.sdk.adapters.claude`: `keyturn_can_use_tool`, `keyturn_pre_tool_use_hook` (Claude Agent SDK) and
  the decision behind `keyturn hook claude-code` (Claude Code).

The frameworks are optional dependencies (`pip install keyturn[adapters]`), so this package imports none.
"""

from keyturn.sdk.adapters._common import ActionSpec, AdapterError, action_for_tool, denial_text

__all__ = ["ActionSpec", "AdapterError", "action_for_tool", "denial_text"]
