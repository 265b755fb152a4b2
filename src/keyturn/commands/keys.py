"""`keyturn keys …`: agent API keys. The plaintext key is printed once; only its hash is stored."""

from __future__ import annotations

import re
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
    name = agent.removeprefix("agent:")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]*", name):
        typer.echo(f"--agent: {agent!r} is not a valid agent name (letters, digits, _ . @ -)", err=True)
        raise typer.Exit(2)
    principal_id = f"agent:{name}"
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
    # A whole key pasted by mistake is reduced to its id (`kt_XXXXXXXX`): the secret part is never echoed.
    key_id = "_".join(key_id.strip().split("_")[:2])
    store, repository = _repository(config, database)
    try:
        existing = repository.get(key_id)
        revoked = repository.revoke(key_id)
    finally:
        store.close()
    if not revoked:
        if existing is not None and existing.revoked_at is not None:
            typer.echo(
                f"key {key_id} was already revoked at {existing.revoked_at.isoformat(timespec='seconds')}"
            )
            return
        typer.echo(f"no key {key_id} (see `keyturn keys list`)", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
