"""`keyturn admin …`: administration through a running server's `/v1/admin` API, with an admin's token
(`KEYTURN_TOKEN`), so an admin need not touch the database. Every action is ledgered, the admin as actor."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keyturn.client import ApiError, Client, default_url

app = typer.Typer(no_args_is_help=True)
api_keys = typer.Typer(no_args_is_help=True)
user_tokens = typer.Typer(no_args_is_help=True)
signing_keys = typer.Typer(no_args_is_help=True)
app.add_typer(api_keys, name="api-keys", help="Agent API keys: create, list, revoke.")
app.add_typer(user_tokens, name="user-tokens", help="Personal tokens of the users file: list, revoke.")
app.add_typer(signing_keys, name="signing-keys", help="The server's signing keys: list, rotate, retire.")

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar=["KEYTURN_TOKEN"], help="an admin's user token or JWT")
]


def _call(url: str, token: str | None, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        with Client(url, token) as client:
            return client.admin(method, path, body)
    except ApiError as exc:
        errors.print(f"[red]error:[/red] {escape(exc.message)} [dim]({exc.code})[/dim]")
        raise typer.Exit(1) from exc


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title)
    table.add_column(columns[0], no_wrap=True)  # an id, copied into the next command: never folded
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _when(value: str | None) -> str:
    return datetime.fromisoformat(value).isoformat(timespec="seconds") if value else ""


@api_keys.command("create")
def create_api_key(
    agent: Annotated[str, typer.Option(help="agent name; the principal becomes agent:NAME")],
    groups: Annotated[list[str] | None, typer.Option("--groups", help="group (repeatable)")] = None,
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Create an API key for an agent and print it once."""
    answer = _call(url, token, "POST", "api-keys", {"agent": agent, "groups": groups or []})
    typer.echo(answer["api_key"])
    typer.echo(f"created key {answer['key_id']} for {answer['principal']}; store it now", err=True)


@api_keys.command("list")
def list_api_keys(url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """List agent API keys (never the secrets)."""
    items = _call(url, token, "GET", "api-keys")["items"]
    rows = [
        [i["key_id"], i["principal"], ", ".join(i["groups"]), _when(i["created_at"]), _when(i["revoked_at"])]
        for i in items
    ]
    _table("API keys", ["key id", "principal", "groups", "created", "revoked"], rows)


@api_keys.command("revoke")
def revoke_api_key(key_id: str, url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Revoke an agent API key."""
    key_id = "_".join(key_id.strip().split("_")[:2])  # never send (or echo) a pasted secret
    answer = _call(url, token, "POST", f"api-keys/{key_id}/revoke")
    typer.echo(f"revoked {answer['key_id']} ({answer['principal']})")


@user_tokens.command("list")
def list_user_tokens(url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """List the personal tokens of the users file (never the secrets)."""
    items = _call(url, token, "GET", "user-tokens")["items"]
    rows = [[i["token_id"], i["user"], i["name"], _when(i["created_at"])] for i in items]
    _table("user tokens", ["token id", "user", "name", "created"], rows)


@user_tokens.command("revoke")
def revoke_user_token(token_id: str, url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Revoke a personal token: it is removed from the users file and refused from the next request on."""
    token_id = "_".join(token_id.strip().split("_")[:2])
    answer = _call(url, token, "POST", f"user-tokens/{token_id}/revoke")
    typer.echo(f"revoked {answer['token_id']} of {answer['user']}")


@signing_keys.command("list")
def list_signing_keys(url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """List the server's keys: current, verifying and retired."""
    from keyturn.commands.signing_keys import key_lines

    for line in key_lines(_call(url, token, "GET", "signing-keys")["items"]):
        typer.echo(line)


@signing_keys.command("rotate")
def rotate_signing_key(
    purpose: Annotated[str, typer.Option("--purpose", help="grant or ledger")] = "grant",
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Make a new key current; the previous one keeps verifying until retired."""
    answer = _call(url, token, "POST", "signing-keys/rotate", {"purpose": purpose})
    typer.echo(f"{answer['purpose']} key {answer['kid']} is now current")


@signing_keys.command("retire")
def retire_signing_key(kid: str, url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Stop an old key from verifying anything."""
    answer = _call(url, token, "POST", f"signing-keys/{kid}/retire")
    typer.echo(f"retired {answer['purpose']} key {answer['kid']}")
