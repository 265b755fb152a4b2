"""`keyturn chat …`: link your Slack account to your keyturn identity (a client of the running server).

Clicking Approve in Slack as an unlinked user answers with a one-time code; run `keyturn chat link CODE`
authenticated as yourself (a user token or an OIDC bearer token in KEYTURN_TOKEN) to link that Slack
account to you. Your groups are never taken from Slack: keyturn looks them up when you review.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from keyturn.client import ApiError, Client, default_url
from keyturn.commands.output import api_failure, console

app = typer.Typer(no_args_is_help=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="KEYTURN_URL", help="server URL")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="KEYTURN_TOKEN", help="your user token or OIDC bearer token")
]


def _call(url: str, token: str | None, call: Callable[[Client], Any]) -> Any:
    try:
        with Client(url, token) as client:
            return call(client)
    except ApiError as exc:
        api_failure(exc)


@app.command("link")
def link(
    code: Annotated[str, typer.Argument(help="the one-time code Slack showed you (ktl_…)")],
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Link the chat account that received CODE to you (the identity of --token)."""
    made = _call(url, token, lambda c: c.chat_link(code))
    console.print(
        f"linked {escape(made['provider'])} account {escape(made['team_id'])}/{escape(made['user_id'])} "
        f"to {escape(made['principal_id'])}"
    )


@app.command("list")
def list_links(url: UrlOption = default_url(), token: TokenOption = None) -> None:
    """Your linked chat accounts."""
    answer = _call(url, token, lambda c: c.chat_links())
    table = Table(title="linked chat accounts")
    for column in ("provider", "team", "user", "principal", "method", "linked at"):
        table.add_column(column)
    for item in answer["items"]:
        table.add_row(
            item["provider"],
            item["team_id"],
            item["user_id"],
            item["principal_id"],
            item["method"],
            item["linked_at"],
        )
    console.print(table)


@app.command("unlink")
def unlink(
    team_id: Annotated[str, typer.Argument(help="Slack team (workspace) id, e.g. T0123")],
    user_id: Annotated[str, typer.Argument(help="Slack user id, e.g. U0123")],
    url: UrlOption = default_url(),
    token: TokenOption = None,
) -> None:
    """Unlink one of your Slack accounts."""
    _call(url, token, lambda c: c.chat_unlink("slack", team_id, user_id))
    console.print(f"unlinked slack account {escape(team_id)}/{escape(user_id)}")
