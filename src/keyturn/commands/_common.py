"""Options shared by the server-side commands: they read the same configuration as `keyturn serve`."""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyturn.config import ConfigError, Settings, load_settings
from keyturn.model import Principal, PrincipalKind, Role

if TYPE_CHECKING:
    from keyturn.admin import Admin
    from keyturn.signing_keys import KeyRing

ConfigOption = Annotated[Path | None, typer.Option("--config", envvar="KEYTURN_CONFIG", help="keyturn.yaml")]
DatabaseOption = Annotated[str | None, typer.Option("--database", help="overrides the configured database")]


def settings(config: Path | None, database: str | None) -> Settings:
    try:
        return load_settings(config, database=database)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from exc


def local_admin() -> Principal:
    """The operator of a server-side command, as the ledger names them: `local:<login name>`. Running a
    command on the configuration and database directly is administration, so it has the admin role."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = f"uid-{os.getuid()}"
    return Principal(id=f"local:{login}", kind=PrincipalKind.HUMAN, roles=frozenset({Role.ADMIN}))


@contextlib.contextmanager
def admin_service(config: Path | None, database: str | None) -> Iterator[Admin]:
    """`keyturn.admin.Admin` on the configured database and key ring (one line and exit 2 on a problem)."""
    from keyturn.admin import Admin
    from keyturn.server.startup import StartupError, key_encryption_key, open_keyring, open_store
    from keyturn.signing_keys import KeyRingError

    resolved = settings(config, database)
    try:
        kek = key_encryption_key(resolved)
        store = open_store(resolved.database, group_commit=resolved.store.group_commit)
    except StartupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    def keyring() -> KeyRing:
        try:
            return open_keyring(resolved, store, kek)
        except KeyRingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc

    try:
        yield Admin(store, keyring, users_file=resolved.users_file, ledger_origin=resolved.ledger.origin)
    finally:
        store.close()
