"""The `keyturn` command: every subcommand, put together.

Server-side commands (`serve`, `db`, `api-keys`, `signing-keys`, `users`, `ledger`) work on the
configuration and database directly; `admin` goes through a running server's admin API; the request
commands (keyturn.commands.requests: `submit`, `list`, `show`, `approve`, `deny`, `cancel`, `wait`) are
clients of a running server, authenticated with `KEYTURN_TOKEN` (a user token or an agent API key)
against `KEYTURN_URL`.

Each subcommand's module is imported only when that subcommand runs (or shows its own help): together
they load SQLAlchemy, Alembic, the policy engine, httpx and the server, seconds of imports that
`keyturn --help` or `keyturn approve` must not pay for. `COMMANDS` names where each one lives and the
one line `keyturn --help` lists for it (tests/unit/test_cli_lazy.py checks that line against the
command's own help).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperCommand, TyperGroup

from keyturn import __version__

# group: a Typer app mounted under the name; merged: a command of a Typer app, mounted at the top level;
# command: a function, with the module's CONTEXT and HELP (the settings `keyturn.entry` uses too).
Kind = Literal["group", "merged", "command"]


@dataclass(frozen=True)
class Subcommand:
    module: str
    attr: str
    help: str  # what `keyturn --help` lists; a group's full help
    kind: Kind = "group"
    hidden: bool = False
    deprecated: bool = False


def _requests(help_line: str) -> Subcommand:
    return Subcommand("keyturn.commands.requests", "app", help_line, kind="merged")


COMMANDS: dict[str, Subcommand] = {
    "mcp-proxy": Subcommand(
        "keyturn.commands.mcp",
        "mcp_proxy",
        "Serve MCP to an agent, forwarding to an upstream MCP server, with every tool call gated by keyturn.",
        kind="command",
    ),
    "exec": Subcommand(
        "keyturn.commands.exec_",
        "run",
        "Run a command once a human approves that exact argv (the command gate).",
        kind="command",
    ),
    "serve": Subcommand(
        "keyturn.commands.serve",
        "app",
        "Run the server (REST API, timers, ledger checkpoints).",
        kind="merged",
    ),
    "policy": Subcommand("keyturn.commands.policy", "app", "Check, explain and test policies."),
    "db": Subcommand("keyturn.commands.db", "app", "Database schema."),
    "api-keys": Subcommand("keyturn.commands.api_keys", "app", "Agent API keys (on the database directly)."),
    # The old name of `api-keys`, kept so scripts keep working; hidden so that "keys" means one thing only.
    "keys": Subcommand(
        "keyturn.commands.api_keys",
        "app",
        "Agent API keys (on the database directly).",
        hidden=True,
        deprecated=True,
    ),
    "signing-keys": Subcommand(
        "keyturn.commands.signing_keys",
        "app",
        "The server's signing keys (grants, ledger checkpoints): list, rotate, retire.",
    ),
    "admin": Subcommand(
        "keyturn.commands.admin", "app", "Administration through a running server (admin role)."
    ),
    "users": Subcommand(
        "keyturn.commands.users", "app", "Users file: humans, groups, roles, personal tokens."
    ),
    "ledger": Subcommand("keyturn.commands.ledger", "app", "Verify, export, prove and report on the ledger."),
    "outbox": Subcommand("keyturn.commands.outbox", "app", "Channel deliveries: list, retry dead ones."),
    "channels": Subcommand(
        "keyturn.commands.channels", "app", "Notification channels: test a target, enable one."
    ),
    "chat": Subcommand("keyturn.commands.chat", "app", "Link your Slack account to your keyturn identity."),
    "hook": Subcommand("keyturn.commands.hook", "app", "Agent hooks: `keyturn hook claude-code`."),
    "submit": _requests("Submit an action request and print the answer as JSON."),
    "list": _requests("List requests (the review queue with --reviewable)."),
    "show": _requests("Show one request: full context, route, reviews and history."),
    "approve": _requests("Approve a pending request, optionally narrowing editable params."),
    "deny": _requests("Deny a pending request."),
    "cancel": _requests("Cancel your own pending request."),
    "wait": _requests("Wait for a decision, showing who is still needed and the time left."),
}


def load(name: str, spec: Subcommand) -> Any:
    """The click command of one subcommand, registered exactly as an eager `add_typer` would."""
    module = importlib.import_module(spec.module)
    target = getattr(module, spec.attr)
    holder = typer.Typer()
    if spec.kind == "group":
        holder.add_typer(target, name=name, help=spec.help, hidden=spec.hidden, deprecated=spec.deprecated)
    elif spec.kind == "merged":
        holder.add_typer(target)
    else:
        holder.command(name, context_settings=module.CONTEXT, help=module.HELP)(target)
    return typer.main.get_group(holder).commands[name]


class LazyGroup(TyperGroup):
    """The root group: subcommands from `COMMANDS`, each imported on first use.

    Listing them (`keyturn --help`) shows each one's help line from `COMMANDS` without importing it.
    """

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        known = super().get_command(ctx, cmd_name)
        spec = COMMANDS.get(cmd_name)
        if known is not None or spec is None:
            return known
        if self._listing:
            return TyperCommand(cmd_name, help=spec.help, hidden=spec.hidden, deprecated=spec.deprecated)
        command = load(cmd_name, spec)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="keyturn",
    cls=LazyGroup,
    help="Action-level approvals: the human checkpoint between what an agent intends and what it does.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        typer.echo(f"keyturn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Action-level approvals: the human checkpoint between what an agent intends and what it does."""


def main() -> None:
    app(prog_name="keyturn")


if __name__ == "__main__":
    main()
