"""`keyturn users …`: the users file (humans, groups, roles, personal tokens)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from keyturn.identity.errors import UsersFileError
from keyturn.identity.users import add_user_token, read_users, set_user_password

app = typer.Typer(no_args_is_help=True)
console = Console()

UsersFileOption = Annotated[
    Path, typer.Option("--users-file", envvar="KEYTURN_USERS_FILE", help="the users file (users.yaml)")
]


@app.command("add-token")
def add_token(
    user_id: Annotated[str, typer.Argument(help="user id, e.g. user:alice@example.com")],
    users_file: UsersFileOption,
    name: Annotated[str, typer.Option("--name", help="label, e.g. the machine it is for")] = "",
) -> None:
    """Create a personal token for a user: print it once, store only its hash in the users file.

    The file is rewritten with PyYAML: the leading comment block is kept, other comments are not.
    A running server picks the new token up without a restart.
    """
    try:
        plaintext = add_user_token(users_file, user_id, name)
    except UsersFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(plaintext)
    typer.echo(f"added a token for {user_id} to {users_file}; store it now, it is not shown again", err=True)


@app.command("set-password")
def set_password(
    user_id: Annotated[str, typer.Argument(help="user id, e.g. user:alice@example.com")],
    users_file: UsersFileOption,
    password: Annotated[
        str,
        typer.Option(
            "--password",
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="KEYTURN_NEW_PASSWORD",
            help="asked for when not given (12 characters at least)",
        ),
    ],
) -> None:
    """Set a user's web console password (single machine): only its argon2id hash is stored."""
    try:
        set_user_password(users_file, user_id, password)
    except UsersFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"password set for {user_id} in {users_file}", err=True)


@app.command("list")
def list_users(users_file: UsersFileOption) -> None:
    """List users, their groups, roles and token ids (never secrets)."""
    try:
        document = read_users(users_file)
    except UsersFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    table = Table(title=f"users in {users_file}")
    for column in ("id", "name", "groups", "roles", "tokens"):
        table.add_column(column)
    for user in document.users:
        table.add_row(
            user.id,
            user.name,
            ", ".join(user.groups),
            ", ".join(r.value for r in user.roles),
            ", ".join(f"{t.id} ({t.name})" if t.name else t.id for t in user.tokens),
        )
    console.print(table)
