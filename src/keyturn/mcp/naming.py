"""How an MCP tool call is named for keyturn: action, resource and the context policy may look at."""

from __future__ import annotations

import re
from typing import Any

import mcp.types as types

SERVER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class InvalidServerName(ValueError):
    """A server name that cannot be part of an action name."""


def check_server_name(name: str) -> str:
    if not SERVER_NAME.fullmatch(name):
        raise InvalidServerName(
            f"--name {name!r}: use letters, digits, '_' or '-' (it becomes the action prefix mcp.NAME.TOOL)"
        )
    return name


def tool_segment(tool: str) -> str:
    """The tool name as it appears in the action: MCP allows characters (like '/') that actions do not.

    Dots are kept, so `admin.users.list` gives `mcp.NAME.admin.users.list` and globs such as `*.list` apply.
    Anything else outside [A-Za-z0-9_.-] becomes '_', and empty dot segments are dropped.
    """
    cleaned = ".".join(part for part in _UNSAFE.sub("_", tool).split(".") if part)
    return cleaned or "_"


def action_for(server: str, tool: str) -> str:
    return f"mcp.{server}.{tool_segment(tool)}"


def resource_for(server: str, tool: str) -> str:
    return f"mcp://{server}/{tool}"


def annotations_of(tool: types.Tool | None) -> dict[str, Any]:
    """The upstream's self-declared hints, for policy to read — never a reason to allow by themselves."""
    hints = tool.annotations if tool is not None else None
    return {
        "readOnlyHint": hints.read_only_hint if hints else None,
        "destructiveHint": hints.destructive_hint if hints else None,
        "idempotentHint": hints.idempotent_hint if hints else None,
        "openWorldHint": hints.open_world_hint if hints else None,
        "title": (hints.title if hints else None) or (tool.title if tool is not None else None),
    }


def call_context(
    server: str, tool_name: str, tool: types.Tool | None, client: types.Implementation | None
) -> dict[str, Any]:
    mcp: dict[str, Any] = {"server": server, "tool": tool_name, "annotations": annotations_of(tool)}
    if client is not None:
        # which agent application made the call (as it introduced itself): useful to a reviewer
        mcp["client"] = {"name": client.name, "version": client.version}
    return {"mcp": mcp}
