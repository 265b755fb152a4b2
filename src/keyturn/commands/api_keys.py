"""`keyturn api-keys …`: agent API keys, on the configured database directly (for the first key, or with
no server running). The plaintext key is printed once; only its hash is stored. Each change is ledgered
with the operator as `local:<login>`. With a running server, `keyturn admin api-keys …` does the same
over the API."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from keyturn.commands._common import ConfigOption, DatabaseOption, admin_service, local_admin
from keyturn.errors import ServiceError
from keyturn.store.records import ApiKeyRecord

app = typer.Typer(no_args_is_help=True)
console = Console()


@app.command()
def create(
    agent: Annotated[str, typer.Option(help="agent name; the principal becomes agent:NAME")],
    groups: Annotated[
        list[str] | None, typer.Option("--groups", help="group (repeatable or comma-separated)")
    ] = None,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create an API key for an agent and print it once."""
    from keyturn.admin import agent_principal

    try:
        agent_principal(agent)
    except ValueError as exc:
        typer.echo(f"--agent: {exc}", err=True)
        raise typer.Exit(2) from exc
    with admin_service(config, database) as admin:
        created = admin.create_api_key(local_admin(), agent, groups or [])
    typer.echo(created.plaintext)
    typer.echo(
        f"created key {created.record.key_id} for {created.record.principal_id}; "
        "store it now, it is not shown again",
        err=True,
    )


@app.command("list")
def list_keys(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """List API keys (never the secrets)."""
    with admin_service(config, database) as admin:
        records = admin.list_api_keys(local_admin())
    print_api_keys(records)


def print_api_keys(records: list[ApiKeyRecord]) -> None:
    table = Table(title="API keys")
    for column in ("key id", "principal", "groups", "created", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.key_id,
            r.principal_id,
            ", ".join(r.groups),
            r.created_at.isoformat(timespec="seconds"),
            r.revoked_at.isoformat(timespec="seconds") if r.revoked_at else "",
        )
    console.print(table)


@app.command()
def revoke(key_id: str, config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Revoke an API key; requests made with it are refused from now on."""
    # A whole key pasted by mistake is reduced to its id (`kt_XXXXXXXX`): the secret part is never echoed.
    key_id = "_".join(key_id.strip().split("_")[:2])
    with admin_service(config, database) as admin:
        try:
            admin.revoke_api_key(local_admin(), key_id)
        except ServiceError as exc:
            if "already revoked" in exc.message:
                typer.echo(f"key {exc.message.removeprefix('API key ')}")
                return
            typer.echo(f"no key {key_id} (see `keyturn api-keys list`)", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"revoked {key_id}")
