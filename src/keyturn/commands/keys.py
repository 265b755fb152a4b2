"""`keyturn keys …`: agent API keys. The plaintext key is printed once; only its hash is stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from keyturn.commands._common import ConfigOption, DatabaseOption, settings
from keyturn.identity.api_keys import generate_api_key
from keyturn.store import SqlApiKeyRepository, Store

app = typer.Typer(no_args_is_help=True)
console = Console()


def _repository(config: ConfigOption, database: DatabaseOption) -> tuple[Store, SqlApiKeyRepository]:
    store = Store.open(settings(config, database).database)
    store.upgrade()
    return store, SqlApiKeyRepository(store)


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
    names = sorted({g.strip() for entry in groups or [] for g in entry.split(",") if g.strip()})
    principal_id = agent if agent.startswith("agent:") else f"agent:{agent}"
    plaintext, record = generate_api_key(principal_id, names, datetime.now(UTC))
    store, repository = _repository(config, database)
    try:
        repository.add(record)
    finally:
        store.close()
    typer.echo(plaintext)
    typer.echo(
        f"created key {record.key_id} for {principal_id}; store it now, it is not shown again", err=True
    )


@app.command("list")
def list_keys(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """List API keys (never the secrets)."""
    store, repository = _repository(config, database)
    try:
        records = repository.list()
    finally:
        store.close()
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
    store, repository = _repository(config, database)
    try:
        revoked = repository.revoke(key_id)
    finally:
        store.close()
    if not revoked:
        typer.echo(f"no active key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
