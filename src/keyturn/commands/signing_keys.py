"""`keyturn signing-keys …`: the server's own keys (grant and ledger signing keys), on the configuration
directly: in the database when a key-encryption key is set, else in `data_dir`. Not the agents' API keys
(`keyturn api-keys`). A running server picks a rotation up without a restart. Each change is ledgered with
the operator as `local:<login>`; with a running server, `keyturn admin signing-keys …` does the same over
the API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from keyturn.commands._common import ConfigOption, DatabaseOption, admin_service, local_admin
from keyturn.errors import ServiceError
from keyturn.signing_keys import KeyInfo

app = typer.Typer(no_args_is_help=True)

PurposeOption = Annotated[str, typer.Option("--purpose", help="grant or ledger")]


def print_keys(keys: list[KeyInfo]) -> None:
    """One key a line (a kid is 43 characters and is copied into `retire`: a table would fold it or squeeze
    the other columns on an 80-column terminal)."""
    for line in key_lines([k.as_dict() for k in keys]):
        typer.echo(line)


def key_lines(items: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'kid':<43}  {'purpose':<8} {'state':<9} created"]
    for k in items:
        created = datetime.fromisoformat(k["created_at"]).strftime("%Y-%m-%d %H:%M")
        retired = k.get("retired_at")
        tail = f"  retired {datetime.fromisoformat(retired):%Y-%m-%d %H:%M}" if retired else ""
        lines.append(f"{k['kid']:<43}  {k['purpose']:<8} {k['state']:<9} {created}{tail}")
    return lines


@app.command("list")
def list_keys(
    state: Annotated[
        str | None, typer.Option("--state", help="only keys in this state: current, verifying, retired")
    ] = None,
    ids: Annotated[bool, typer.Option("--ids", help="print only the kids, one a line, oldest first")] = False,
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """List the keys: current (signs), verifying (an older key, still accepted) and retired."""
    with admin_service(config, database) as admin:
        keys = admin.list_signing_keys(local_admin())
    if state is not None:
        keys = [k for k in keys if k.state == state]
    if ids:
        for key in sorted(keys, key=lambda k: (k.created_at, k.kid)):
            typer.echo(key.kid)
        return
    print_keys(keys)


@app.command()
def rotate(
    purpose: PurposeOption = "grant", config: ConfigOption = None, database: DatabaseOption = None
) -> None:
    """Make a new key current. The old one keeps verifying what it signed until it is retired."""
    with admin_service(config, database) as admin:
        try:
            info = admin.rotate_signing_key(local_admin(), purpose)
        except ServiceError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"{info.purpose} key {info.kid} is now current; the previous one still verifies until retired")


@app.command()
def retire(
    kid: Annotated[str, typer.Argument(help="the kid of a verifying key (see `keyturn signing-keys list`)")],
    config: ConfigOption = None,
    database: DatabaseOption = None,
) -> None:
    """Stop an old key from verifying: grants it signed are refused from now on."""
    with admin_service(config, database) as admin:
        try:
            info = admin.retire_signing_key(local_admin(), kid)
        except ServiceError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"retired {info.purpose} key {info.kid}")


@app.command("new-kek")
def new_kek_command() -> None:
    """Print a new key-encryption key (32 random bytes, base64) for KEYTURN_KEY_ENCRYPTION_KEY."""
    from keyturn.signing_keys import new_kek

    typer.echo(new_kek())
