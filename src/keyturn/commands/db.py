"""`keyturn db …`: the database schema."""

from __future__ import annotations

import typer

from keyturn.commands._common import ConfigOption, DatabaseOption, settings
from keyturn.store import Store

app = typer.Typer(no_args_is_help=True)


@app.command()
def upgrade(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Apply the database migrations (`keyturn serve` does this at start too)."""
    url = settings(config, database).database
    store = Store.open(url)
    try:
        store.upgrade()
    finally:
        store.close()
    typer.echo(f"database at {url.split('@')[-1]} is up to date")
