"""Options shared by the server-side commands: they read the same configuration as `keyturn serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from keyturn.config import ConfigError, Settings, load_settings

ConfigOption = Annotated[Path | None, typer.Option("--config", envvar="KEYTURN_CONFIG", help="keyturn.yaml")]
DatabaseOption = Annotated[str | None, typer.Option("--database", help="overrides the configured database")]


def settings(config: Path | None, database: str | None) -> Settings:
    try:
        return load_settings(config, database=database)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc
