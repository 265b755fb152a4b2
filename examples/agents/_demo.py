"""Shared bits of the agent demos: the gate's settings and a line telling the human what to run."""

from __future__ import annotations

import os
import sys
from typing import Any

URL = os.environ.get("KEYTURN_URL", "http://127.0.0.1:8300")

_FRAMEWORKS = {"agents", "langchain", "langchain_core", "langgraph", "claude_agent_sdk"}


def _install_hint(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    # The demos import their framework right after this module: a missing one gets the command, not a trace.
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] in _FRAMEWORKS:
        print(f"{error.name} is not installed: .venv/bin/pip install -e '.[adapters]'", file=sys.stderr)
        return
    sys.__excepthook__(kind, error, trace)


sys.excepthook = _install_hint


def api_key() -> str:
    key = os.environ.get("KEYTURN_API_KEY", "")
    if not key:
        sys.exit(
            "set KEYTURN_API_KEY to an agent key first:\n"
            "  export KEYTURN_API_KEY=$(.venv/bin/keyturn api-keys create --agent demo-bot "
            "--config examples/keyturn.yaml)"
        )
    return key


def show_waiting(view: dict[str, Any]) -> None:
    """`on_update`: print once per change what the request waits for and the command that approves it."""
    if view.get("status") == "pending":
        needs = ", ".join(view.get("still_needed") or []) or "a reviewer"
        print(
            f"  ⏳ {view['action']} waits on {needs}: keyturn approve {view['id']}"
            f"  (or: keyturn deny {view['id']} --reason …)"
        )
    else:
        print(f"  → {view.get('id')}: {view.get('status')}")
